"""The anchor of benchmarks/serve.py: the endpoint a user would write without `vaedeploy serve`. FastAPI, a pydantic
body (the seed, and for encode the image as a JSON list), the runtime called per request in FastAPI's thread pool,
JSON out. Nothing batches.

    python benchmarks/serve_anchor.py PORT NAME=BUNDLE [NAME=BUNDLE ...]
"""
import sys

import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from vaedeploy import load

app = FastAPI()
runtimes = {}


class SampleRequest(BaseModel):
    seed: int = 0


class EncodeRequest(BaseModel):
    x: list[float]
    seed: int = 0


@app.post("/{name}/sample")
def sample(name: str, request: SampleRequest):
    return {"x": runtimes[name].sample(1, seed=request.seed).tolist()}


@app.post("/{name}/encode")
def encode(name: str, request: EncodeRequest):
    runtime = runtimes[name]
    x = np.asarray(request.x, np.float32).reshape(1, *runtime.input_shape)
    return {"z": runtime.encode(x, seed=request.seed).tolist()}


if __name__ == "__main__":
    port, bundles = int(sys.argv[1]), dict(arg.split("=", 1) for arg in sys.argv[2:])
    runtimes.update({name: load(path) for name, path in bundles.items()})
    print(f"anchor listening on http://127.0.0.1:{port}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
