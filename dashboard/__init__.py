"""The live Plotly Dash dashboard: talks to the fraudstream API over HTTP only.

    from dashboard.app import create_app
    create_app("http://127.0.0.1:8000").run()

It imports neither `core` nor any service: `dashboard.client` is the one module that
knows the API's URLs, so the dashboard can run on another machine than the API.
"""
