-- tricommit PgLedger schema (docs/pg.md). Installed by `tricommit pg init`.
-- Amounts are bigint; a vote's reason is 0 for yes, -1 for read-only, else the
-- tricommit `Reason` code of the no.

CREATE TABLE tc_meta (
    schema_version integer NOT NULL,
    accounts bigint NOT NULL,
    initial_balance bigint NOT NULL
);

-- One row per account. `opening` is the balance before any posting, so that every
-- balance can be recomputed from the postings: balance = opening + sum(delta).
CREATE TABLE tc_accounts (
    id bigint PRIMARY KEY,
    opening bigint NOT NULL,
    balance bigint NOT NULL,
    debits_pending bigint NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    credits_pending bigint NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    CHECK (balance - debits_pending >= 0)
);

-- Every vote this shard cast, with the participant's prepare sequence number of the
-- batch that cast it: replay and retries return it instead of voting again.
CREATE TABLE tc_votes (
    txn_id bigint PRIMARY KEY,
    batch_seq bigint NOT NULL,
    reason smallint NOT NULL
);

-- Reservations held for transactions voted yes and not yet decided.
CREATE TABLE tc_pending (
    txn_id bigint PRIMARY KEY,
    account_id bigint NOT NULL,
    delta bigint NOT NULL
);

-- The audit trail: one row per committed leg.
CREATE TABLE tc_postings (
    txn_id bigint PRIMARY KEY,
    account_id bigint NOT NULL,
    delta bigint NOT NULL
);

-- PREPARE of one batch: conditional reservations in order (a later leg sees the
-- reservations of the earlier ones), each vote recorded. A transaction already voted by
-- this batch (a retry after a lost connection) returns its recorded vote; one voted by
-- another batch is a duplicate.
CREATE FUNCTION tc_prepare(seq bigint, txns bigint[], accounts bigint[], amounts bigint[],
                           kinds smallint[]) RETURNS smallint[]
LANGUAGE plpgsql AS $$
DECLARE
    reasons smallint[] := '{}';
    vote smallint;
    prior record;
    account_count bigint;
BEGIN
    SELECT m.accounts INTO account_count FROM tc_meta m;
    FOR i IN 1 .. coalesce(array_length(txns, 1), 0) LOOP
        SELECT v.batch_seq, v.reason INTO prior FROM tc_votes v WHERE v.txn_id = txns[i];
        IF FOUND THEN
            reasons := reasons || CASE WHEN prior.batch_seq = seq THEN prior.reason
                                       ELSE 6::smallint END;
            CONTINUE;
        END IF;
        IF accounts[i] < 0 OR accounts[i] >= account_count THEN
            vote := 2;
        ELSIF kinds[i] = 1 THEN
            UPDATE tc_accounts SET debits_pending = debits_pending + amounts[i]
             WHERE id = accounts[i] AND balance - debits_pending >= amounts[i];
            vote := CASE WHEN FOUND THEN 0 ELSE 3 END;
            IF vote = 0 THEN
                INSERT INTO tc_pending VALUES (txns[i], accounts[i], -amounts[i]);
            END IF;
        ELSIF kinds[i] = 2 THEN
            UPDATE tc_accounts SET credits_pending = credits_pending + amounts[i]
             WHERE id = accounts[i]
               AND balance::numeric + credits_pending + amounts[i] <= 9223372036854775807;
            vote := CASE WHEN FOUND THEN 0 ELSE 5 END;
            IF vote = 0 THEN
                INSERT INTO tc_pending VALUES (txns[i], accounts[i], amounts[i]);
            END IF;
        ELSE
            PERFORM 1 FROM tc_accounts
             WHERE id = accounts[i] AND balance - debits_pending >= amounts[i];
            vote := CASE WHEN FOUND THEN -1 ELSE 3 END;
        END IF;
        INSERT INTO tc_votes VALUES (txns[i], seq, vote);
        reasons := reasons || vote;
    END LOOP;
    RETURN reasons;
END $$;

-- Posts (commit) or voids (abort) the reservations of the given transactions; ids
-- without a reservation are ignored, so a replayed decision changes nothing twice.
-- (Data-modifying WITH parts always run to completion, read or not.)
CREATE FUNCTION tc_decide(txns bigint[], post boolean) RETURNS bigint
LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM tc_pending WHERE txn_id = ANY(txns)
        RETURNING txn_id, account_id, delta
    ), posted AS (
        INSERT INTO tc_postings SELECT txn_id, account_id, delta FROM gone WHERE post
        RETURNING 1
    ), sums AS (
        SELECT account_id,
               sum(CASE WHEN delta < 0 THEN -delta ELSE 0 END)::bigint AS debits,
               sum(CASE WHEN delta > 0 THEN delta ELSE 0 END)::bigint AS credits,
               sum(delta)::bigint AS net
          FROM gone GROUP BY account_id
    ), moved AS (
        UPDATE tc_accounts a
           SET balance = a.balance + CASE WHEN post THEN s.net ELSE 0 END,
               debits_pending = a.debits_pending - s.debits,
               credits_pending = a.credits_pending - s.credits
          FROM sums s WHERE a.id = s.account_id
        RETURNING 1
    )
    SELECT count(*) FROM gone;
$$;

-- Makes what this shard holds for one batch agree with the votes the participant
-- logged (`logged`, same encoding as the reasons): a transaction the shard voted yes
-- but the participant logged as no (a commit whose acknowledgement was lost) has its
-- reservation released and its vote rewritten. Returns how many logged yes votes the
-- shard does not hold (0 unless the database lost committed data).
CREATE FUNCTION tc_reconcile(seq bigint, txns bigint[], logged smallint[]) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    prior record;
    missing bigint := 0;
BEGIN
    FOR i IN 1 .. coalesce(array_length(txns, 1), 0) LOOP
        SELECT v.batch_seq, v.reason INTO prior FROM tc_votes v WHERE v.txn_id = txns[i];
        IF logged[i] = 0 THEN
            IF NOT FOUND OR prior.batch_seq <> seq OR prior.reason <> 0 THEN
                missing := missing + 1;
            END IF;
        ELSIF NOT FOUND THEN
            INSERT INTO tc_votes VALUES (txns[i], seq, logged[i]);
        ELSIF prior.batch_seq = seq AND prior.reason = 0 THEN
            PERFORM tc_decide(ARRAY[txns[i]], false);
            UPDATE tc_votes SET reason = logged[i] WHERE txn_id = txns[i];
        END IF;
    END LOOP;
    RETURN missing;
END $$;

-- Releases every reservation whose transaction is not in `keep` (the participant never
-- logged a vote for it, so no coordinator can commit it) and rewrites its vote to
-- `reason`. Returns how many were released.
CREATE FUNCTION tc_release_orphans(keep bigint[], reason smallint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    orphans bigint[];
BEGIN
    SELECT coalesce(array_agg(txn_id), '{}') INTO orphans
      FROM tc_pending WHERE NOT (txn_id = ANY(keep));
    PERFORM tc_decide(orphans, false);
    UPDATE tc_votes SET reason = tc_release_orphans.reason WHERE txn_id = ANY(orphans);
    RETURN coalesce(array_length(orphans, 1), 0);
END $$;
