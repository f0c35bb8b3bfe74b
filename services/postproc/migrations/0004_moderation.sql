-- The moderation and quality verdict on each answer (keyed by its InferenceCompleted event).
CREATE TABLE moderation_results (
    tenant_id     text        NOT NULL,
    event_id      text        NOT NULL,
    model_version text        NOT NULL,
    occur_time    timestamptz NOT NULL,
    categories    text[]      NOT NULL DEFAULT '{}',
    score         real        NOT NULL,
    flagged       boolean     NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);

CREATE INDEX moderation_results_newest ON moderation_results (tenant_id, occur_time DESC, event_id DESC);
CREATE INDEX moderation_results_flagged ON moderation_results (tenant_id, occur_time DESC) WHERE flagged;
