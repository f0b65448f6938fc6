"""Human feedback: a web app where a team of annotators writes feedback on the model's answers.

    laffi annotators add alice --run runs/demo          # prints alice's secret token
    laffi annotators add boss --admin --run runs/demo   # an admin token (admin page)
    laffi serve runs/demo                                # http://127.0.0.1:8000/
    laffi export-feedback runs/demo                      # -> runs/demo/feedback.human.jsonl

The pieces, one idea each:
    config.py    ServeConfig: database URL, address, K annotations per item, input limits
    db.py        the SQLAlchemy engine (SQLite in WAL mode, or PostgreSQL) and the schema upgrades
    store.py     every read and write of the app: annotators, items, assignment, submissions
    exchange.py  export to / import from the pipeline's Feedback JSONL; agreement report
    security.py  tokens, cookies, CSRF, response headers
    app.py       the Flask app: pages and forms
    serve.py     runs the app on waitress
"""
