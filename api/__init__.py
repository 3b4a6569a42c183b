"""The analytics API: FastAPI over the PostgreSQL the scorer fills, plus predict/explain/publish.

`api.main.create_app` builds the app; `api.cli.main` serves it (`fraudstream api`);
`api.schemas` is the response contract; `bench.api` (outside the service) measures it.
"""
