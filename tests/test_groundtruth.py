import math

import numpy as np
import pytest

from prismaudio.procedural.synth import make_clip
from prismaudio.metrics.groundtruth import (class_recall, itd_error, onset_errors, onset_summary,
                                            side_accuracy)

SR = 16000
CFG = {"duration": 4.0, "fps": 25.0, "size": 96, "sample_rate": SR}


@pytest.fixture(scope="module")
def clips():
    return [make_clip(0, i, CFG) for i in range(6)]


def _shift(a, n=SR // 10):
    out = np.zeros_like(a)
    out[:, n:] = a[:, :-n]
    return out


def test_onsets(clips):
    errs, errs_shift = [], []
    for row, _, a, _ in clips:
        errs += onset_errors(a, SR, row["scene"]).value
        errs_shift += onset_errors(_shift(a), SR, row["scene"]).value
    s, ss = onset_summary(errs), onset_summary(errs_shift)
    assert s["median_ms"] < 5 and s["miss_rate"] <= 0.2
    assert ss["miss_rate"] > 0.8  # 100 ms late: outside the 50 ms search radius


def test_side_and_itd(clips):
    n_side = n_itd = 0
    for row, _, a, _ in clips:
        sc = row["scene"]
        single_static = len(sc["sources"]) == 1 and not sc["sources"][0]["moving"]
        acc, swapped = side_accuracy(a, SR, sc), side_accuracy(a[::-1], SR, sc)
        if single_static and abs(sc["sources"][0]["positions"]["x"][0]) > 0.1:
            assert acc.value == 1.0 and swapped.value == 0.0
            n_side += 1
        e, es = itd_error(a, SR, sc), itd_error(a[::-1], SR, sc)
        if single_static:
            assert e.value < 0.05
            assert es.value > 0.1 or abs(sc["sources"][0]["itd_s"]) < 5e-5
            n_itd += 1
        else:
            assert math.isnan(e.value) and e.reason
    assert n_side >= 3 and n_itd >= 3


def test_not_applicable_and_recall(clips):
    row = clips[0][0]
    z = np.zeros((2, 4 * SR))
    for f in (onset_errors, side_accuracy, itd_error):
        m = f(z, SR, row["scene"])
        assert math.isnan(m.value) and "silent" in m.reason
    moving = next(r for r, *_ in clips if r["scene"]["sources"][0]["moving"])
    assert math.isnan(itd_error(clips[0][2], SR, moving["scene"]).value)
    cls = {s["class"] for s in row["scene"]["sources"]}
    assert class_recall(cls, row["scene"]).value == 1.0
    assert class_recall(set(), row["scene"]).value == 0.0
    assert math.isnan(class_recall({"x"}, {"sources": []}).value)
