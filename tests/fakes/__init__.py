"""Local stand-ins for the outside services (Slack Web API, Twilio) that tests talk to over HTTP."""
