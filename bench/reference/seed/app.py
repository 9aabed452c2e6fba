# The seed's app.py, as the tutorial writes it, with one change: `app.run()` listens on 127.0.0.1
# only, where nothing outside the container reaches it, so here it listens on 0.0.0.0, on the
# port the seed's manifests name (containerPort 5000). Nothing else differs.
from flask import Flask
app = Flask(__name__)
@app.route("/")
def hello_world():
    return "Hello World!"
if __name__ == "__main__":
    app.run(host="0.0.0.0", port=5000)
