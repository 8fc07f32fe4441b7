-- Run once by the postgres image, on an empty data volume: one database per component, owned by POSTGRES_USER.
-- The names are the last part of the URLs in docker/.env (tests/test_docker.py checks that they agree).
CREATE DATABASE seqcast;
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
