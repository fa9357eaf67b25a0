-- Nothing to change: 0001 already holds what SQLite's migrations 1 and 2 create. This file keeps the
-- two backends' version numbers the same from here on (migrations are numbered without gaps).
SELECT 1;
