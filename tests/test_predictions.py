"""save_outputs=true: predictions.npz round trip (single process; 2 processes and resume in test_eval_distributed.py)."""
import json
import os

import numpy as np
import pytest

import evaluate
from dataset.common import load_split
from evaluation.predictions import ShardWriter, read_predictions
from test_eval_grid import EQR, TRM, build_model, write_checkpoint, write_data
from utils.errors import RunError


def check_against_results(output_dir: str, data_path: str) -> dict:
    """predictions.npz agrees with results.json and the dataset; returns it."""
    with open(os.path.join(output_dir, "results.json")) as f:
        results = json.load(f)
    saved = read_predictions(os.path.join(output_dir, results["predictions"]))
    head = results["headline"]
    assert (saved["depth"], saved["breadth"], saved["rule"]) == (head["depth"], head["breadth"], head["rule"])
    scored = (saved["labels"] != 0).any(1)
    assert saved["solved"].sum() == head["correct"] and scored.sum() == head["total"]
    assert saved["solved"].sum() / scored.sum() == head["accuracy"]
    # Solved flags and answers say the same thing, cell by cell.
    right = ((saved["answers"] == saved["labels"]) | (saved["labels"] == 0)).all(1) & scored
    assert np.array_equal(right, saved["solved"])
    _, arrays = load_split(data_path, "test")
    assert np.array_equal(saved["index"], np.arange(len(arrays["inputs"])))
    assert np.array_equal(saved["inputs"], arrays["inputs"]) and np.array_equal(saved["labels"], arrays["labels"])
    assert saved["inputs"].dtype == np.uint8 and saved["solved"].dtype == np.bool_
    assert 0 <= saved["trajectory"].min() and saved["trajectory"].max() < head["breadth"]
    return saved


@pytest.mark.parametrize("arch,grid", [(EQR, ["depths=[1,2]", "breadths=[1,4]"]), (TRM, ["halt_max_steps=2"])],
                         ids=["eqr-conv-top1", "trm-traj1"])
def test_saved_predictions_give_the_headline_accuracy(tmp_path, arch, grid):
    head = build_model(arch, q_weight_std=0.5)
    data = write_data(str(tmp_path / "data"), head, n=7)
    ckpt = write_checkpoint(str(tmp_path / "ckpt.pt"), head, data, seed=99)  # the seed of the labels
    out = str(tmp_path / "out")
    assert evaluate.main([f"checkpoint={ckpt}", f"output_dir={out}", "global_batch_size=3", "save_every_batches=1",
                          "save_outputs=true", "progress=false", "plots=false", "device=cpu", *grid]) == 0
    saved = check_against_results(out, data)
    assert 0 < saved["solved"].sum() < 7  # a mixed result, so a wrong flag would show
    assert sorted(os.listdir(out)) == ["predictions.npz", "results.csv", "results.json"]  # chunks merged and gone


def test_resumed_writer_drops_chunks_past_the_saved_counts(tmp_path):
    writer = ShardWriter(str(tmp_path), 0, 1, 0, vocab_size=4)
    for first, end in ((0, 2), (2, 4)):
        writer.rows.append({k: np.zeros(1) for k in ("index", "inputs", "labels", "answers", "trajectory", "solved")})
        writer.flush(end)
    partial = tmp_path / "partial"
    assert len(os.listdir(partial)) == 2
    ShardWriter(str(tmp_path), 0, 1, 2, vocab_size=4)  # the counts were saved after batch 2 only
    assert os.listdir(partial) == ["predictions-rank0-of-1-batches00000000-00000002.npz"]


def test_read_predictions_refuses_another_file(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, a=np.zeros(2))
    with pytest.raises(RunError, match="not an eqr-predictions/1 file"):
        read_predictions(str(path))
