"""The trainer's records pickle exactly as BigDL's own Python Samples do.

``dlscale.trainer.to_samples`` skips BigDL's per-record Python objects (README, step 15); the
executor JVM only ever sees their pickles, so those must be BigDL's, byte for byte. Run in the
trainer environment (BigDL's Python classes; no JVM is started).
"""

from __future__ import annotations

import json
import subprocess

from dlscale_testing import REPO

COMPARE = r"""
import io, json, pickle, sys
import numpy as np
from pyspark.serializers import AutoBatchedSerializer, PickleSerializer
from bigdl.dllib.utils.common import Sample
from dlscale.trainer import MNIST_MEAN, MNIST_STD, to_samples

rng = np.random.default_rng(7)
images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
labels = np.array([0, 9, 3, 3, 1], dtype=np.int32)
label_offset = float(sys.argv[1])  # BigDL's labels are 1-based: 1.0 is right, 0.0 the control

def bigdl_sample(image, label):
    normalised = (image.astype(np.float32) / np.float32(255.0) - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)
    return Sample.from_ndarray(normalised, np.array([label + label_offset], dtype=np.float32))

ours = list(to_samples(images, labels))
theirs = [bigdl_sample(image, label) for image, label in zip(images, labels)]
same = {str(protocol): all(pickle.dumps(a, protocol) == pickle.dumps(b, protocol) for a, b in zip(ours, theirs))
        for protocol in (2, pickle.HIGHEST_PROTOCOL)}
# through pyspark's serializer (the cached RDD's), back into BigDL's Python classes
stream = io.BytesIO()
AutoBatchedSerializer(PickleSerializer()).dump_stream(iter(ours), stream)
stream.seek(0)
loaded = list(AutoBatchedSerializer(PickleSerializer()).load_stream(stream))
print(json.dumps({
    "same_pickles": same,
    "records": len(loaded),
    "types": sorted({type(s).__name__ for s in loaded}),
    "features_equal": all(np.array_equal(s.features[0].to_ndarray(), t.features[0].to_ndarray())
                          for s, t in zip(loaded, theirs)),
    "feature_shapes": sorted({tuple(int(d) for d in s.features[0].shape) for s in loaded}),
    "labels": [float(s.labels[0].storage[0]) for s in loaded],
}))
"""


def compare(trainer_python: str, label_offset: float) -> dict:
    done = subprocess.run([trainer_python, "-W", "ignore::DeprecationWarning", "-c", COMPARE, str(label_offset)],
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_records_pickle_as_bigdls_samples_and_load_back_as_them(trainer_python):
    result = compare(trainer_python, 1.0)
    assert result["same_pickles"] == {"2": True, "5": True}
    assert result["records"] == 5 and result["types"] == ["Sample"]
    assert result["features_equal"] and result["feature_shapes"] == [[28, 28]]
    assert result["labels"] == [1.0, 10.0, 4.0, 4.0, 2.0]


def test_the_comparison_sees_a_label_off_by_one(trainer_python):
    """Positive control: BigDL Samples with 0-based labels do not pickle as the records do."""
    result = compare(trainer_python, 0.0)
    assert result["same_pickles"] == {"2": False, "5": False}
