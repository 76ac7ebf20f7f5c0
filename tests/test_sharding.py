"""Data parallelism: 8 simulated devices == 1 device; host slices; a real two-process jax.distributed job."""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from saliency_jax.sharding import host_slice, round_up

TESTS = str(pathlib.Path(__file__).parent)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 8])
@pytest.mark.parametrize("n", [0, 1, 5, 8, 100, 1001])
def test_host_slices_are_disjoint_balanced_and_cover_everything(n, count):
    slices = [host_slice(n, i, count) for i in range(count)]
    assert slices[0][0] == 0 and slices[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))  # contiguous, in order, no overlap
    sizes = [stop - start for start, stop in slices]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n


def test_host_slice_rejects_bad_process_ids():
    with pytest.raises(ValueError, match="process_index < process_count"):
        host_slice(10, 2, 2)
    with pytest.raises(ValueError, match="process_index < process_count"):
        host_slice(10, 0, 0)


def test_round_up_pads_to_the_device_count():
    assert [round_up(n, 8) for n in (1, 8, 9, 32, 33)] == [8, 8, 16, 32, 40]
    assert round_up(5, 1) == 5


_EIGHT_DEVICES = textwrap.dedent("""
    import sys, pathlib
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from test_batch_job import tiny_model, write_images
    from saliency_jax.sharding import data_mesh
    from saliency_jax.jobs import make_step, fetch, run_batch_job, load_outputs
    from saliency_jax.data import open_source

    assert jax.device_count() == 8, jax.devices()
    model = tiny_model()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    targets = np.array([-1, 3] * 8, np.int32)
    eight, one = data_mesh(), data_mesh(jax.devices()[:1])
    for method, options in [("vanilla", {{}}), ("smoothgrad", {{"num_samples": 4}})]:
        outs = []
        for mesh in (eight, one):
            step, batch = make_step(model, method, batch_size=13, key=jax.random.key(7), options=options, mesh=mesh)
            assert batch == (16 if mesh is eight else 13), batch
            x, t = (pixels, targets) if batch == 16 else (pixels[:13], targets[:13])
            result = step(x, t)
            if mesh is eight:
                assert len(result[0].sharding.device_set) == 8
                assert result[0].addressable_shards[0].data.shape == (2, 32, 32)  # 16 images / 8 devices
            outs.append(fetch(result))
        for a, b in zip(outs[0], outs[1]):
            np.testing.assert_allclose(a[:13], b, rtol=1e-5, atol=1e-6, err_msg=method)
        np.testing.assert_array_equal(outs[0].predicted[:13], outs[1].predicted)

    # A whole job over 8 devices (11 images: batches padded to a multiple of 8) equals one device.
    root = pathlib.Path(sys.argv[1])
    write_images(root / "in", 11)
    source = open_source(str(root / "in"))
    for name, mesh in (("eight", eight), ("one", one)):
        s = run_batch_job(source, model, root / name, method="smoothgrad", options={{"num_samples": 4}},
                          batch_size=5, shard_size=6, mesh=mesh, progress=False)
        assert s.devices == mesh.devices.size and s.images == 11
    a, b = load_outputs(root / "eight"), load_outputs(root / "one")
    np.testing.assert_allclose(a["maps"], b["maps"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a["id"], b["id"])
    print("OK")
""")


def test_eight_simulated_devices_equal_one_for_vanilla_and_smoothgrad(tmp_path):
    script = tmp_path / "eight.py"
    script.write_text(_EIGHT_DEVICES.format(tests=TESTS))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), run.stderr[-3000:]


_HOST = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from saliency_jax.sharding import initialize_distributed
    index, count = initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))  # before any other JAX call
    from test_batch_job import tiny_model
    from saliency_jax.data import open_source
    from saliency_jax.jobs import run_batch_job
    s = run_batch_job(open_source(sys.argv[3]), tiny_model(), sys.argv[4], shard_size=3, progress=False)
    print(index, count, s.total, s.images)
""")


def test_two_hosts_with_jax_distributed_each_take_their_slice(tmp_path):
    """Two real processes joined by jax.distributed.initialize (CPU, localhost) split one folder."""
    sys.path.insert(0, TESTS)
    from test_batch_job import write_images

    from saliency_jax.jobs import load_outputs

    write_images(tmp_path / "in", 9)
    script = tmp_path / "host.py"
    script.write_text(_HOST.format(tests=TESTS))
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, str(script), f"localhost:{port}", str(i), str(tmp_path / "in"),
                               str(tmp_path / "out")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert sorted(r[0].split() for r in results) == [["0", "2", "5", "5"], ["1", "2", "4", "4"]]
    parts = [load_outputs(tmp_path / "out" / f"process-{i:05d}-of-00002") for i in range(2)]
    ids = np.concatenate([p["id"] for p in parts])
    assert list(ids) == [f"img{i:03d}.png" for i in range(9)]
