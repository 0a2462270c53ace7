"""Every block_id, action_id and callback_id the app uses, in one place.

Form block ids are the service's field names (services/campaign_validation.FIELDS) where a
field has its own block, so `ValidationFailed.errors` map onto blocks without translation.
"""

from __future__ import annotations

# --- views (callback_id) -------------------------------------------------------------------
LOADING_VIEW = "campaign_loading"
AUDIENCE_VIEW = "campaign_audience"
TABLE_VIEW = "campaign_table"
FORM_VIEW = "campaign_form"
CONFIRM_VIEW = "campaign_confirm"
PREVIEW_VIEW = "campaign_preview"
DONE_VIEW = "campaign_done"
HOME_VIEW = "campaign_home"

# --- audience step ---------------------------------------------------------------------------
SEGMENT_BLOCK = "segment"
SEGMENT_ACTION = "segment_select"
CUSTOMIZE_BLOCK = "customize"
CUSTOMIZE_ACTION = "customize_selection"

# --- lazy table ------------------------------------------------------------------------------
SEARCH_BLOCK = "search"
SEARCH_ACTION = "search_patients"
PATIENTS_BLOCK = "patients"
PATIENTS_ACTION = "patients_page"
PAGER_BLOCK = "pager"
PREVIOUS_ACTION = "page_previous"
NEXT_ACTION = "page_next"
SELECT_PAGE_ACTION = "select_all_on_page"
SELECTED_BLOCK = "selected"

# --- campaign form (block ids = service field names) ----------------------------------------
SUBJECT_BLOCK = "subject"
PREVIEW_TEXT_BLOCK = "preview_text"
MESSAGE_BLOCK = "message"
CHANNEL_BLOCK = "channel"
WHEN_BLOCK = "when"
SEND_AT_BLOCK = "send_at"
TAGS_BLOCK = "tags"
ATTACHMENT_BLOCK = "attachment"
FORM_ACTIONS_BLOCK = "form_actions"
VALUE_ACTION = "value"  # the one element of each form input block
PREVIEW_ACTION = "preview_campaign"
WHEN_NOW = "now"
WHEN_SCHEDULE = "schedule"

# --- preview ---------------------------------------------------------------------------------
TEST_BLOCK = "test_send"
TEST_PHONE_BLOCK = "test_phone"
TEST_EMAIL_ACTION = "send_test_email"
TEST_SMS_ACTION = "send_test_sms"

# --- channel messages, /campaign list, App Home ----------------------------------------------
CANCEL_ACTION = "campaign_cancel"
SEND_NOW_ACTION = "campaign_send_now"
STATS_ACTION = "campaign_stats"
CAMPAIGN_ACTIONS_BLOCK = "campaign_actions"
