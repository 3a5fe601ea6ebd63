"""Drives lorafleet's OpenAI-compatible API with the real `openai` package.

Usage: client.py URL TOKEN_A TOKEN_B DATA_DIR OUT_DIR

Uploads files, creates a job on the catalogue's `tiny` base, pages the job
list, follows events until the job succeeds, lists checkpoints, downloads
the latest checkpoint's adapter into OUT_DIR, cancels a second job, checks
that bad requests get OpenAI error objects and that tenant B sees none of
tenant A's objects. Prints one JSON line: what the caller compares.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

import openai
from openai import OpenAI

url, token_a, token_b, data_dir, out_dir = sys.argv[1:6]
a = OpenAI(base_url=f"{url}/v1", api_key=token_a, max_retries=0, timeout=60)
b = OpenAI(base_url=f"{url}/v1", api_key=token_b, max_retries=0, timeout=60)
DEADLINE = time.monotonic() + 420


def expect_error(kind, call, param=None, code=None, contains=None):
    try:
        call()
    except kind as e:
        body = e.body if isinstance(e.body, dict) else {}
        if param is not None:
            assert body.get("param") == param, (param, body)
        if code is not None:
            assert body.get("code") == code, (code, body)
        if contains is not None:
            assert contains in body.get("message", ""), (contains, body)
        assert isinstance(body.get("message"), str) and body["message"], body
        return body
    raise AssertionError(f"expected {kind.__name__}")


def path(name):
    return os.path.join(data_dir, name)


# --- files
with open(path("quickstart-train.jsonl"), "rb") as f:
    train = a.files.create(file=("train.jsonl", f), purpose="fine-tune")
with open(path("quickstart-val.jsonl"), "rb") as f:
    valid = a.files.create(file=("valid.jsonl", f), purpose="fine-tune")
assert train.id.startswith("file-") and train.purpose == "fine-tune", train
assert train.bytes == os.path.getsize(path("quickstart-train.jsonl")), train
assert train.filename == "train.jsonl", train
listed = [f.id for f in a.files.list()]
assert train.id in listed and valid.id in listed, listed
assert a.files.retrieve(train.id).filename == "train.jsonl"
with open(path("quickstart-train.jsonl"), "rb") as f:
    assert a.files.content(train.id).read() == f.read()

# --- bad requests get OpenAI error objects
with open(path("quickstart-val.jsonl"), "rb") as f:
    expect_error(openai.BadRequestError,
                 lambda: a.files.create(file=("v.jsonl", f), purpose="assistants"),
                 param="purpose")
bad = b'{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": \n'
body = expect_error(openai.BadRequestError,
                    lambda: a.files.create(file=("bad.jsonl", bad), purpose="fine-tune"),
                    param="file", code="invalid_file", contains="bad.jsonl:2")
assert all(f.filename != "bad.jsonl" for f in a.files.list()), "a refused file was kept"
expect_error(openai.BadRequestError,
             lambda: a.fine_tuning.jobs.create(model="tiny", training_file="file-missing"),
             param="training_file")
expect_error(openai.BadRequestError,
             lambda: a.fine_tuning.jobs.create(model="gpt-9", training_file=train.id),
             param="model", code="model_not_found")
expect_error(openai.AuthenticationError,
             lambda: OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).files.list())

# --- a job that trains, and one that is cancelled
job = a.fine_tuning.jobs.create(
    model="tiny",
    training_file=train.id,
    validation_file=valid.id,
    suffix="api-test",
    seed=3,
    hyperparameters={"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 0.5},
    extra_body={"lorafleet": {"max_steps": 12, "checkpoint_every": 6, "eval_every": 6,
                              "lora": {"r": 4, "alpha": 8}}},
)
assert job.status in ("queued", "running"), job
assert job.model == "tiny" and job.training_file == train.id, job
assert job.validation_file == valid.id and job.seed == 3, job
assert job.hyperparameters.batch_size == 8, job.hyperparameters
other = a.fine_tuning.jobs.create(
    model="tiny", training_file=train.id,
    extra_body={"lorafleet": {"max_steps": 100000}})

# Pages of one, newest first; the SDK's auto-paging follows `after`.
first = a.fine_tuning.jobs.list(limit=1)
assert [j.id for j in first.data] == [other.id] and first.has_more, first
second = a.fine_tuning.jobs.list(limit=1, after=other.id)
assert [j.id for j in second.data] == [job.id], second
assert [j.id for j in a.fine_tuning.jobs.list(limit=1)] == [other.id, job.id]

cancelled = a.fine_tuning.jobs.cancel(other.id)
assert cancelled.status == "cancelled", cancelled

# --- follow events until the job ends
seen = {}
while True:
    assert time.monotonic() < DEADLINE, "the job did not finish in time"
    for event in a.fine_tuning.jobs.list_events(job.id, limit=100):
        seen[event.id] = event
    current = a.fine_tuning.jobs.retrieve(job.id)
    if current.status in ("succeeded", "failed", "cancelled"):
        break
    time.sleep(1)
for event in a.fine_tuning.jobs.list_events(job.id, limit=1000):
    seen[event.id] = event
assert current.status == "succeeded", current
assert current.fine_tuned_model == f"ft:tiny:team-a:api-test:{job.id}", current.fine_tuned_model
assert current.trained_tokens and current.trained_tokens > 0, current
metrics = [e for e in seen.values() if e.type == "metrics"]
steps = sorted({e.data["step"] for e in metrics if "train_loss" in e.data})
assert steps[-1] == 12, steps
assert any("valid_loss" in e.data for e in metrics), "no validation metrics"
assert any(e.data.get("type") == "job.succeeded" for e in seen.values())
# Paged events: newest first, pages do not overlap.
page = a.fine_tuning.jobs.list_events(job.id, limit=3)
nxt = a.fine_tuning.jobs.list_events(job.id, limit=3, after=page.data[-1].id)
ids = [e.id for e in page.data] + [e.id for e in nxt.data]
assert len(set(ids)) == 6 and ids == sorted(ids, key=lambda i: -int(i.split("-")[1])), ids

# --- checkpoints and the adapter download
checkpoints = a.fine_tuning.jobs.checkpoints.list(job.id).data
assert [c.step_number for c in checkpoints] == [12, 6], [c.step_number for c in checkpoints]
latest = checkpoints[0]
assert latest.fine_tuning_job_id == job.id
assert latest.metrics.train_loss is not None, latest.metrics
files = {f["name"]: f for f in latest.model_extra["lorafleet"]["files"]}
assert "adapter_model.safetensors" in files, files


def download(file_url, token):
    """(status, bytes) of a GET with the bearer token."""
    request = urllib.request.Request(url + file_url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


status, adapter = download(files["adapter_model.safetensors"]["url"], token_a)
assert status == 200, (status, adapter[:200])
assert len(adapter) == files["adapter_model.safetensors"]["bytes"]
os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, "adapter_model.safetensors"), "wb") as f:
    f.write(adapter)

# --- tenant B sees none of it
for call in [
    lambda: b.fine_tuning.jobs.retrieve(job.id),
    lambda: b.fine_tuning.jobs.cancel(job.id),
    lambda: b.fine_tuning.jobs.list_events(job.id),
    lambda: b.fine_tuning.jobs.checkpoints.list(job.id),
    lambda: b.files.retrieve(train.id),
    lambda: b.files.content(train.id),
    lambda: b.files.delete(train.id),
]:
    expect_error(openai.NotFoundError, call)
assert b.fine_tuning.jobs.list().data == []
assert b.files.list().data == []
status, body = download(files["adapter_model.safetensors"]["url"], token_b)
assert status == 404, status
assert json.loads(body)["error"]["message"], body
expect_error(openai.BadRequestError,
             lambda: b.fine_tuning.jobs.create(model="tiny", training_file=train.id),
             param="training_file")

# --- deleting a file
deleted = a.files.delete(valid.id)
assert deleted.deleted and deleted.id == valid.id
expect_error(openai.NotFoundError, lambda: a.files.retrieve(valid.id))

print(json.dumps({"job": job.id, "step": latest.step_number}))
