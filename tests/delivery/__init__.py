"""Tests of the delivery engine and its senders."""
