-- Issue 19: the GitHub deliveries devstack asked GitHub to deliver again (once per guid and pass window).
-- depends: 0001.initial
CREATE TABLE IF NOT EXISTS redeliveries (
    guid TEXT PRIMARY KEY,            -- X-GitHub-Delivery of a delivery devstack never acknowledged
    requested_at DOUBLE PRECISION NOT NULL          -- when devstack asked GitHub to deliver it again
);
