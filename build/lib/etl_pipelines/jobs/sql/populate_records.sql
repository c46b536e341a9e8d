-- Creates auth.users and fills it with :rows users in five departments. Portable between
-- PostgreSQL and SQLite (where the auth schema is an attached database). Re-runnable.
CREATE TABLE IF NOT EXISTS auth.users (
    id INTEGER PRIMARY KEY,
    name VARCHAR(100) NOT NULL,
    email VARCHAR(255) NOT NULL UNIQUE,
    department VARCHAR(50) NOT NULL,
    salary NUMERIC(12, 2) NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

DELETE FROM auth.users;

WITH RECURSIVE seq(n) AS (
    SELECT 1
    UNION ALL
    SELECT n + 1 FROM seq WHERE n < :rows
)
INSERT INTO auth.users (id, name, email, department, salary)
SELECT
    n,
    'User ' || n,
    'user' || n || '@example.com',
    CASE n % 5
        WHEN 0 THEN 'engineering'
        WHEN 1 THEN 'sales'
        WHEN 2 THEN 'marketing'
        WHEN 3 THEN 'finance'
        ELSE 'support'
    END,
    30000 + (n * 7919) % 90000
FROM seq;
