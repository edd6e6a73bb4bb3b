"""PostgreSQL source: pgoutput logical replication over psycopg 3."""
