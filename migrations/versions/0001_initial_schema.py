"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 22:16:07.922533
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('access_grants',
    sa.Column('slack_user_id', sa.String(length=64), nullable=False),
    sa.Column('level', sa.String(length=10), nullable=False),
    sa.Column('granted_by', sa.String(length=64), nullable=False),
    sa.Column('granted_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('slack_user_id', name=op.f('pk_access_grants'))
    )
    op.create_table('app_secrets',
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('value', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_app_secrets'))
    )
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=60), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_campaign_id'), ['campaign_id'], unique=False)

    op.create_table('campaigns',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('draft', 'scheduled', 'sending', 'completed', 'cancelled', 'missed', 'failed', name='campaign_status', native_enum=False, length=20), nullable=False),
    sa.Column('channel', sa.Enum('EMAIL', 'SMS', 'EMAIL_SMS', name='campaign_channel', native_enum=False, length=20), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('preview_text', sa.String(length=150), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('segment_slug', sa.String(length=80), nullable=True),
    sa.Column('audience_size', sa.Integer(), nullable=False),
    sa.Column('send_now', sa.Boolean(), nullable=False),
    sa.Column('send_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status_reason', sa.Text(), nullable=True),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('slack_channel_id', sa.String(length=32), nullable=True),
    sa.Column('slack_message_ts', sa.String(length=32), nullable=True),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaigns')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_campaigns_idempotency_key'))
    )
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_campaigns_send_at'), ['send_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_campaigns_status'), ['status'], unique=False)

    op.create_table('modal_drafts',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('slack_user_id', sa.String(length=64), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('selected_patient_ids', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_modal_drafts'))
    )
    with op.batch_alter_table('modal_drafts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_modal_drafts_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_modal_drafts_slack_user_id'), ['slack_user_id'], unique=False)

    op.create_table('patients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('external_id', sa.String(length=100), nullable=False),
    sa.Column('first_name', sa.String(length=100), nullable=False),
    sa.Column('last_name', sa.String(length=100), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=True),
    sa.Column('phone', sa.String(length=20), nullable=True),
    sa.Column('birth_date', sa.Date(), nullable=True),
    sa.Column('birth_month', sa.Integer(), nullable=True),
    sa.Column('patient_type', sa.String(length=50), nullable=True),
    sa.Column('last_study_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('timezone', sa.String(length=64), nullable=True),
    sa.Column('email_opt_in', sa.Boolean(), nullable=False),
    sa.Column('sms_opt_in', sa.Boolean(), nullable=False),
    sa.Column('email_opted_out_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sms_opted_out_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('sort_key', sa.String(length=200).with_variant(sa.String(length=200, collation='C'), 'postgresql'), nullable=False),
    sa.Column('first_name_key', sa.String(length=200).with_variant(sa.String(length=200, collation='C'), 'postgresql'), nullable=False),
    sa.Column('last_name_key', sa.String(length=200).with_variant(sa.String(length=200, collation='C'), 'postgresql'), nullable=False),
    sa.Column('email_key', sa.String(length=200).with_variant(sa.String(length=200, collation='C'), 'postgresql'), nullable=True),
    sa.Column('phone_key', sa.String(length=200).with_variant(sa.String(length=200, collation='C'), 'postgresql'), nullable=True),
    sa.Column('external_id_key', sa.String(length=200).with_variant(sa.String(length=200, collation='C'), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patients')),
    sa.UniqueConstraint('external_id', name=op.f('uq_patients_external_id'))
    )
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_patients_birth_month'), ['birth_month'], unique=False)
        batch_op.create_index('ix_patients_email_key', ['email_key', 'id'], unique=False)
        batch_op.create_index('ix_patients_external_id_key', ['external_id_key', 'id'], unique=False)
        batch_op.create_index('ix_patients_first_name_key', ['first_name_key', 'last_name_key', 'id'], unique=False)
        batch_op.create_index('ix_patients_last_name_key', ['last_name_key', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_patients_last_study_at'), ['last_study_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_patients_patient_type'), ['patient_type'], unique=False)
        batch_op.create_index(batch_op.f('ix_patients_phone'), ['phone'], unique=False)
        batch_op.create_index('ix_patients_phone_key', ['phone_key', 'id'], unique=False)
        batch_op.create_index('ix_patients_sort', ['sort_key', 'id'], unique=False)

    op.create_table('segments',
    sa.Column('slug', sa.String(length=80), nullable=False),
    sa.Column('name', sa.String(length=120), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('definition', sa.JSON(), nullable=False),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('slug', name=op.f('pk_segments'))
    )
    op.create_table('campaign_attachments',
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('content_type', sa.String(length=100), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_campaign_attachments_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('campaign_id', name=op.f('pk_campaign_attachments'))
    )
    op.create_table('campaign_audience',
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_campaign_audience_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_campaign_audience_patient_id_patients')),
    sa.PrimaryKeyConstraint('campaign_id', 'patient_id', name=op.f('pk_campaign_audience'))
    )
    op.create_table('consent_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.Enum('email', 'sms', name='consent_channel', native_enum=False, length=20), nullable=False),
    sa.Column('action', sa.String(length=20), nullable=False),
    sa.Column('source', sa.String(length=40), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_consent_events_campaign_id_campaigns'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_consent_events_patient_id_patients'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consent_events'))
    )
    with op.batch_alter_table('consent_events', schema=None) as batch_op:
        batch_op.create_index('ix_consent_events_patient', ['patient_id', 'created_at'], unique=False)

    op.create_table('deliveries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.Enum('email', 'sms', name='delivery_channel', native_enum=False, length=20), nullable=False),
    sa.Column('status', sa.Enum('pending', 'sending', 'sent', 'delivered', 'failed', 'skipped', 'unknown', name='delivery_status', native_enum=False, length=20), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('error_code', sa.String(length=40), nullable=True),
    sa.Column('address', sa.String(length=254), nullable=True),
    sa.Column('provider_id', sa.String(length=255), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claimed_by', sa.String(length=100), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('clicked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('open_count', sa.Integer(), nullable=False),
    sa.Column('click_count', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_deliveries_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_deliveries_patient_id_patients')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deliveries')),
    sa.UniqueConstraint('campaign_id', 'patient_id', 'channel', name=op.f('uq_deliveries_campaign_id_patient_id_channel'))
    )
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_campaign_status', ['campaign_id', 'status', 'next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_deliveries_provider_id'), ['provider_id'], unique=False)

    op.create_table('patient_tags',
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('tag', sa.String(length=30), nullable=False),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_patient_tags_patient_id_patients'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('patient_id', 'tag', name=op.f('pk_patient_tags'))
    )
    with op.batch_alter_table('patient_tags', schema=None) as batch_op:
        batch_op.create_index('ix_patient_tags_tag', ['tag', 'patient_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('patient_tags', schema=None) as batch_op:
        batch_op.drop_index('ix_patient_tags_tag')

    op.drop_table('patient_tags')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deliveries_provider_id'))
        batch_op.drop_index('ix_deliveries_campaign_status')

    op.drop_table('deliveries')
    with op.batch_alter_table('consent_events', schema=None) as batch_op:
        batch_op.drop_index('ix_consent_events_patient')

    op.drop_table('consent_events')
    op.drop_table('campaign_audience')
    op.drop_table('campaign_attachments')
    op.drop_table('segments')
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.drop_index('ix_patients_sort')
        batch_op.drop_index('ix_patients_phone_key')
        batch_op.drop_index(batch_op.f('ix_patients_phone'))
        batch_op.drop_index(batch_op.f('ix_patients_patient_type'))
        batch_op.drop_index(batch_op.f('ix_patients_last_study_at'))
        batch_op.drop_index('ix_patients_last_name_key')
        batch_op.drop_index('ix_patients_first_name_key')
        batch_op.drop_index('ix_patients_external_id_key')
        batch_op.drop_index('ix_patients_email_key')
        batch_op.drop_index(batch_op.f('ix_patients_birth_month'))

    op.drop_table('patients')
    with op.batch_alter_table('modal_drafts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_modal_drafts_slack_user_id'))
        batch_op.drop_index(batch_op.f('ix_modal_drafts_expires_at'))

    op.drop_table('modal_drafts')
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_campaigns_status'))
        batch_op.drop_index(batch_op.f('ix_campaigns_send_at'))

    op.drop_table('campaigns')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_log_campaign_id'))
        batch_op.drop_index(batch_op.f('ix_audit_log_at'))
        batch_op.drop_index(batch_op.f('ix_audit_log_action'))

    op.drop_table('audit_log')
    op.drop_table('app_secrets')
    op.drop_table('access_grants')
