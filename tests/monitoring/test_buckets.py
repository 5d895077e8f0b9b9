from __future__ import annotations

import numpy as np
import pytest

from edgeship.contract.latency import BUCKET_COUNT, LATENCY_BUCKETS_SECONDS, bucket_index, histogram, quantile


def test_bucket_edges_follow_le_semantics():
    assert bucket_index(0.001) == 0 and bucket_index(0.0011) == 1
    assert bucket_index(10.0) == BUCKET_COUNT - 1
    assert LATENCY_BUCKETS_SECONDS[0] == 0.001 and LATENCY_BUCKETS_SECONDS[-1] == 2.5


def test_quantile_from_histogram_is_close_to_the_sample_quantile():
    rng = np.random.default_rng(1)
    latencies = rng.lognormal(mean=np.log(0.02), sigma=0.4, size=20_000)
    estimate = quantile(histogram(latencies), 0.95)
    truth = float(np.quantile(latencies, 0.95))
    assert estimate == pytest.approx(truth, rel=0.25)
    assert quantile([0] * BUCKET_COUNT, 0.5) is None
    with pytest.raises(ValueError):
        quantile([1, 2], 0.5)
