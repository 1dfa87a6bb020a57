"""cnorm.dask on the threaded scheduler and on a two-process distributed.LocalCluster.

Each result is compared with the NumPy function of the same name on the computed
array, within the accuracy promise, for several chunkings (chunks of one row and
ragged last chunks included).  The cluster (loopback only) is started once for the
module and closed at its end.
"""

import numpy as np
import pytest

import cnorm

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
cd = pytest.importorskip("cnorm.dask")


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None,
                                       worker_dashboard_address=None)
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(params=["threads", "cluster"])
def scheduler(request):
    """A context in which dask computes on the threaded scheduler or on the cluster."""
    if request.param == "threads":
        return lambda: dask.config.set(scheduler="threads")
    client = request.getfixturevalue("cluster_client")
    return client.as_current


# chunkings of a (70, 12) array: whole, one row a chunk, ragged, both axes split
CHUNKS = [(70, 12), (1, 12), (16, 12), (9, 5), (33, 1)]


def assert_moments_close(got, want, var_rtol):
    assert got.count == want.count
    scale = np.sqrt(np.maximum(want.m2 / max(want.count, 1), 1e-300))
    assert np.all(np.abs(got.mean - want.mean) <= 1e-7 * scale + 1e-15 * np.abs(want.mean))
    np.testing.assert_allclose(got.m2, want.m2, rtol=var_rtol, atol=0)


@pytest.mark.parametrize("chunks", CHUNKS, ids=str)
def test_moments_match_cnorm_moments(scheduler, chunks, rng):
    x = (rng.standard_normal((70, 12)) * 0.1 + 1e3).astype(np.float32)
    X = da.from_array(x, chunks=chunks)
    with scheduler():
        for axis in (0, 1, None, (0, 1)):
            m = cd.moments(X, axis)
            assert isinstance(m, cnorm.Moments) and isinstance(m.mean, da.Array)
            mean, m2 = dask.compute(m.mean, m.m2)
            assert_moments_close(cnorm.Moments(m.count, mean, m2), cnorm.moments(x, axis), 1e-6)
            np.testing.assert_allclose(m.var(ddof=1).compute(), x.astype(np.float64)
                                       .var(axis=axis, ddof=1), rtol=1e-6)


def test_moments_three_dimensions_and_split_every(rng):
    x = rng.standard_normal((40, 6, 10)) + 5
    X = da.from_array(x, chunks=(7, 4, 3))
    with dask.config.set(scheduler="threads"):
        for axis in [(0, 2), 1, (0, 1, 2)]:
            for split_every in (None, 2, 3, {0: 2, 2: 4}):
                m = cd.moments(X, axis, split_every=split_every)
                got = cnorm.Moments(m.count, *dask.compute(m.mean, m.m2))
                assert_moments_close(got, cnorm.moments(x, axis), 1e-10)
        # the same graph computed twice: the same bits
        m = cd.moments(X, (0, 2), split_every=2)
        a = dask.compute(m.mean, m.m2)
        b = dask.compute(m.mean, m.m2)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_moments_half_precision_and_methods(rng):
    x = (rng.standard_normal((50, 8)) + 3).astype(np.float16)
    X = da.from_array(x, chunks=(11, 8))
    with dask.config.set(scheduler="threads"):
        for method in ("two_pass", "welford"):
            m = cd.moments(X, 0, method=method)
            got = cnorm.Moments(m.count, *dask.compute(m.mean, m.m2))
            assert_moments_close(got, cnorm.moments(x, 0), 1e-9)


def test_moments_reads_the_data_once(monkeypatch, rng):
    # mean and m2 come from one reduction: each chunk is reduced once for both
    x = rng.standard_normal((64, 4))
    X = da.from_array(x, chunks=(8, 4))
    calls = []
    original = cd._chunk

    def counting(block, axis, keepdims, method, threads, computing_meta=False):
        if not computing_meta:
            calls.append(block.shape)
        return original(block, axis, keepdims, method, threads, computing_meta)

    monkeypatch.setattr(cd, "_chunk", counting)
    m = cd.moments(X, 0)
    with dask.config.set(scheduler="threads"):
        mean, m2 = dask.compute(m.mean, m.m2)
    assert calls == [(8, 4)] * 8
    np.testing.assert_allclose(m2, cnorm.moments(x, 0).m2, rtol=1e-12)


@pytest.mark.parametrize("axis,chunks", [(1, (3, 2, 5, 4)), (1, (1, 6, 5, 4)),
                                         (-1, (4, 5, 3, 6)), (-1, (7, 5, 4, 2))])
def test_batch_norm_training_and_inference(scheduler, axis, chunks, rng):
    shape = (7, 6, 5, 4) if axis == 1 else (7, 5, 4, 6)
    x = (rng.standard_normal(shape) * 0.01 + 300).astype(np.float32)    # |mean| >> std
    X = da.from_array(x, chunks=chunks)
    w = rng.uniform(0.5, 2, 6).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    rm_ref, rv_ref = rm.copy(), rv.copy()
    with scheduler():
        y = cd.batch_norm(X, w, b, rm, rv, training=True, momentum=0.3, axis=axis)
        assert isinstance(y, da.Array) and y.dtype == np.float32 and y.chunks == X.chunks
        y = y.compute()
        want = cnorm.batch_norm(x, w, b, rm_ref, rv_ref, training=True, momentum=0.3, axis=axis)
        np.testing.assert_allclose(y, want, rtol=0, atol=2e-5 * np.abs(want).max())
        np.testing.assert_allclose(rm, rm_ref, rtol=1e-6)
        np.testing.assert_allclose(rv, rv_ref, rtol=1e-5)
        yi = cd.batch_norm(X, w, b, rm, rv, axis=axis).compute()
        np.testing.assert_array_equal(yi, cnorm.batch_norm(x, w, b, rm, rv, axis=axis))


def test_batch_norm_float64_and_no_parameters(rng):
    x = rng.standard_normal((9, 3, 8)) * 2 + 1
    X = da.from_array(x, chunks=(2, 2, 3))
    with dask.config.set(scheduler="threads"):
        y = cd.batch_norm(X, training=True).compute()
    np.testing.assert_allclose(y, cnorm.batch_norm(x, training=True), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunks", [(5, 8, 16), (1, 8, 16), (4, 3, 5), (30, 8, 7)], ids=str)
def test_layer_norm(scheduler, chunks, rng):
    x = rng.standard_normal((30, 8, 16)).astype(np.float32) + 40
    X = da.from_array(x, chunks=chunks)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    with scheduler():
        y = cd.layer_norm(X, (8, 16), w, None, eps=1e-3).compute()
        y1 = cd.layer_norm(X, 16).compute()
    np.testing.assert_array_equal(y, cnorm.layer_norm(x, (8, 16), w, None, eps=1e-3))
    np.testing.assert_array_equal(y1, cnorm.layer_norm(x, 16))


def _sklearn_scaler():
    return pytest.importorskip("sklearn.preprocessing").StandardScaler


@pytest.mark.parametrize("as_dask", [False, True])
def test_standard_scaler_matches_scikit_learn(scheduler, as_dask, rng):
    SK = _sklearn_scaler()
    x = rng.standard_normal((300, 5)) * [1, 10, 1e-3, 5, 2] + [0, -4, 1e3, 7, 0]
    x[:, 4] = 2.5                                   # a constant feature: scale 1
    data = da.from_array(x, chunks=(37, 5)) if as_dask else x
    with scheduler():
        ours = cd.StandardScaler().fit(data)
        theirs = SK().fit(x)
        for name in ("mean_", "var_", "scale_"):
            np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name), rtol=1e-12,
                                       atol=1e-12)
        assert ours.n_samples_seen_ == theirs.n_samples_seen_ == 300
        assert ours.n_features_in_ == 5 and ours.scale_[4] == 1.0
        # the transform of a feature with |mean| / std = 1e6 inherits the two means'
        # difference in their last bits, magnified 1e6 times
        atol = 1e-12 * np.maximum(1.0, np.abs(theirs.mean_) / theirs.scale_)
        t = ours.transform(data)
        assert isinstance(t, da.Array) == as_dask
        t = np.asarray(t.compute() if as_dask else t)
        assert np.all(np.abs(t - theirs.transform(x)) <= atol)
        back = ours.inverse_transform(t)
        np.testing.assert_allclose(np.asarray(back), x, rtol=1e-12, atol=1e-9)
        ft = ours.fit_transform(data)
        assert np.all(np.abs(np.asarray(ft.compute() if as_dask else ft)
                             - theirs.transform(x)) <= atol)


def test_standard_scaler_partial_fit_over_shards(rng):
    SK = _sklearn_scaler()
    x = rng.standard_normal((1000, 4)) * 3 + 50
    ours, theirs = cd.StandardScaler(), SK()
    for s in (slice(0, 1), slice(1, 250), slice(250, 251), slice(251, 1000)):
        shard = da.from_array(x[s], chunks=(100, 4)) if s.start % 2 else x[s]
        ours.partial_fit(shard)
        theirs.partial_fit(x[s])
        np.testing.assert_allclose(ours.mean_, theirs.mean_, rtol=1e-12)
        np.testing.assert_allclose(ours.var_, theirs.var_, rtol=1e-12)
        assert ours.n_samples_seen_ == theirs.n_samples_seen_
    np.testing.assert_allclose(ours.var_, x.var(axis=0), rtol=1e-12)


def test_standard_scaler_options(rng):
    SK = _sklearn_scaler()
    x = (rng.standard_normal((60, 3)) * 2 + 1).astype(np.float32)
    for kw in ({"with_mean": False}, {"with_std": False},
               {"with_mean": False, "with_std": False}):
        ours, theirs = cd.StandardScaler(**kw).fit(x), SK(**kw).fit(x)
        for name in ("mean_", "var_", "scale_"):
            a, b = getattr(ours, name), getattr(theirs, name)
            assert (a is None) == (b is None), (kw, name)
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=1e-6)
        t = ours.transform(x)
        assert t.dtype == np.float32
        np.testing.assert_allclose(t, theirs.transform(x), rtol=1e-6, atol=1e-6)
    s = cd.StandardScaler(ddof=1).fit(x)
    np.testing.assert_allclose(s.var_, x.astype(np.float64).var(axis=0, ddof=1), rtol=1e-6)
    ints = np.arange(12).reshape(4, 3)
    s = cd.StandardScaler().fit(ints)
    assert s.transform(ints).dtype == np.float64
    np.testing.assert_allclose(s.mean_, ints.mean(axis=0))
    assert cd.StandardScaler(with_std=False).get_params() == {
        "with_mean": True, "with_std": False, "ddof": 0}
    assert "with_std=False" in repr(cd.StandardScaler().set_params(with_std=False))


def test_chunk_threads_one_per_dask_thread(scheduler):
    # the cap each chunk call runs under: one thread per Dask thread (the threaded
    # scheduler runs one a CPU; the nanny's workers set OMP_NUM_THREADS=1), or `threads`
    X = da.zeros((4, 3), chunks=(1, 3))

    def seen(block, threads=None):
        with cd._capped(threads):
            return np.full(block.shape, cnorm.get_num_threads())

    with scheduler():
        assert set(X.map_blocks(seen).compute().ravel()) == {1}
        assert set(X.map_blocks(seen, threads=2).compute().ravel()) == {2}
    assert cd.chunk_threads(3) == 3


def test_chunk_threads_single_threaded_scheduler():
    with dask.config.set(scheduler="sync"):
        assert cd.chunk_threads() == cnorm.get_num_threads()


def test_errors_before_any_computation(rng):
    x = rng.standard_normal((10, 4))
    X = da.from_array(x, chunks=5)
    for f in (lambda: cd.moments(x), lambda: cd.batch_norm(x, training=True),
              lambda: cd.layer_norm(x, 4)):
        with pytest.raises(TypeError, match="x must be a dask array"):
            f()
    with pytest.raises(TypeError, match="x must have dtype"):
        cd.moments(da.from_array(np.arange(10), chunks=5))
    unknown = X[X[:, 0] > 0]
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        cd.moments(unknown, 0)
    for bad, exc in ((1, ValueError), (0, ValueError), (2.5, TypeError), ({0: 1}, ValueError)):
        with pytest.raises(exc, match="split_every"):
            cd.moments(X, 0, split_every=bad)
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        cd.moments(X, 2)
    for bad, exc in ((0, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(exc, match="threads"):
            cd.moments(X, 0, threads=bad)
    rm, rv = np.zeros(4), np.ones(4)
    before = rm.copy(), rv.copy()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        cd.batch_norm(da.from_array(x[:1], chunks=1), None, None, rm, rv, training=True)
    with pytest.raises(ValueError, match="weight must have shape"):
        cd.batch_norm(X, np.ones(3), training=True)
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        cd.batch_norm(X)
    with pytest.raises(ValueError, match="given together"):
        cd.batch_norm(X, running_mean=rm, training=True)
    with pytest.raises(TypeError, match="running_mean"):
        cd.batch_norm(X, None, None, rm.astype(np.float32), rv, training=True)
    np.testing.assert_array_equal(rm, before[0])
    np.testing.assert_array_equal(rv, before[1])
    with pytest.raises(ValueError, match="normalized_shape"):
        cd.layer_norm(X, 5)
    with pytest.raises(ValueError, match="not fitted"):
        cd.StandardScaler().transform(x)
    s = cd.StandardScaler().fit(x)
    with pytest.raises(ValueError, match="3 features, but"):
        s.transform(x[:, :3])
    with pytest.raises(ValueError, match="3 features, but"):
        s.partial_fit(x[:, :3])
    with pytest.raises(ValueError, match="must be 2-D"):
        s.fit(x[:, 0])
    with pytest.raises(TypeError, match="ddof"):
        cd.StandardScaler(ddof=0.5)
    with pytest.raises(ValueError, match="unknown parameters"):
        s.set_params(copy=False)


def test_cnorm_dask_is_an_attribute():
    assert cnorm.dask is cd
