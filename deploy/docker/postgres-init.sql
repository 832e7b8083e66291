-- docker-compose's Postgres: the owner role (POSTGRES_USER, runs migrations and owns the
-- tables) is created by the image; this adds the runtime login the workers use. It holds
-- only what migration 0001 grants the NOLOGIN role jobtree_app: SELECT/INSERT on events,
-- the projections, no UPDATE/DELETE/TRUNCATE on the log. Migration 0012 makes it a member of
-- jobtree_service too (the services record rows for any actor: docs/identity.md).
CREATE ROLE jobtree_app NOLOGIN;
CREATE ROLE jobtree_runtime LOGIN PASSWORD 'jobtree-runtime' IN ROLE jobtree_app;
