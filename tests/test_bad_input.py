"""Every kind of bad input gets a clear, specific error, writes nothing and leaves the inputs untouched."""
import hashlib

import numpy as np
import pytest
import SimpleITK as sitk

from DeepRegistrationLib.api import register
from DeepRegistrationLib.cli import main
from DeepRegistrationLib.core.device import resolve_device
from DeepRegistrationLib.core.errors import InputError
from DeepRegistrationLib.core.image import Grid, Image
from DeepRegistrationLib.core.io import read_image, write_image
from DeepRegistrationLib.core.nifti_nonfinite import count_nonfinite_nifti


def _volume(shape=(12, 14, 16), origin=(0, 0, 0), seed=0):
    rng = np.random.default_rng(seed)
    return Image(rng.random(shape).astype(np.float32), Grid(shape[::-1], (2.0, 2.0, 2.0), origin))


@pytest.fixture
def good_pair(tmp_path):
    write_image(_volume(), tmp_path / "fixed.nrrd")
    write_image(_volume(seed=1), tmp_path / "moving.nrrd")
    return tmp_path / "fixed.nrrd", tmp_path / "moving.nrrd"


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_cli_expect_error(tmp_path, capsys, fixed, moving, *extra):
    outputs = [tmp_path / "out" / name for name in ("t.h5", "w.nrrd", "r.json")]
    before = {p: _digest(p) for p in (fixed, moving) if p.exists()}
    code = main(["register", str(fixed), str(moving), "--quiet", "--out-transform", str(outputs[0]),
                 "--out-volume", str(outputs[1]), "--report", str(outputs[2]), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert not any(p.exists() for p in outputs)
    assert before == {p: _digest(p) for p in before}
    return err


def test_missing_file(tmp_path, capsys, good_pair):
    err = _run_cli_expect_error(tmp_path, capsys, tmp_path / "nope.nii.gz", good_pair[1])
    assert "fixed image: file not found" in err


def test_unreadable_file(tmp_path, capsys, good_pair):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"this is not an image")
    err = _run_cli_expect_error(tmp_path, capsys, good_pair[0], bad)
    assert "moving image: cannot read" in err


def test_2d_image(tmp_path, capsys, good_pair):
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkFloat32) + 1.0, str(tmp_path / "slice.nrrd"))
    err = _run_cli_expect_error(tmp_path, capsys, good_pair[0], tmp_path / "slice.nrrd")
    assert "is 2D" in err and "3D volume is needed" in err


def test_4d_image(tmp_path, capsys, good_pair):
    frames = [sitk.GetImageFromArray(np.random.default_rng(i).random((8, 8, 8)).astype(np.float32)) for i in range(3)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "v4d.nii.gz"))
    err = _run_cli_expect_error(tmp_path, capsys, tmp_path / "v4d.nii.gz", good_pair[1])
    assert "4D" in err


def test_vector_image(tmp_path, capsys, good_pair):
    arr = np.random.default_rng(0).random((8, 8, 8, 3)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=True), str(tmp_path / "vec.nrrd"))
    err = _run_cli_expect_error(tmp_path, capsys, good_pair[0], tmp_path / "vec.nrrd")
    assert "3 components per voxel" in err


def test_constant_image(tmp_path, capsys, good_pair):
    write_image(_volume().with_array(np.full((12, 14, 16), 7.0, np.float32)), tmp_path / "const.nrrd")
    err = _run_cli_expect_error(tmp_path, capsys, tmp_path / "const.nrrd", good_pair[1])
    assert "constant" in err


def test_empty_image(good_pair):
    empty = Image(np.zeros((0, 5, 5), np.float32), Grid((5, 5, 0), (1, 1, 1), (0, 0, 0)))
    with pytest.raises(InputError, match="moving image is empty"):
        register(read_image(good_pair[0]), empty, "nmi", "cpu")


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".nii"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_inf(tmp_path, capsys, good_pair, value, suffix):
    # NIfTI files included: ITK's NIfTI reader reads NaN and Inf as 0 on its own.
    arr = _volume().array.copy()
    arr[3, 4, 5] = value
    write_image(_volume().with_array(arr), tmp_path / f"nan{suffix}")
    err = _run_cli_expect_error(tmp_path, capsys, tmp_path / f"nan{suffix}", good_pair[1])
    assert "1 NaN or infinite voxels" in err


def test_nonfinite_count_reads_nifti_pairs_and_doubles(tmp_path):
    arr = _volume().array.astype(np.float64)
    arr[1, 2, 3], arr[4, 5, 6] = np.nan, -np.inf
    itk = sitk.GetImageFromArray(arr)
    sitk.WriteImage(itk, str(tmp_path / "pair.hdr"))
    assert (tmp_path / "pair.img").exists()
    assert count_nonfinite_nifti(tmp_path / "pair.hdr") == 2
    write_image(_volume(), tmp_path / "clean.nii.gz")
    assert count_nonfinite_nifti(tmp_path / "clean.nii.gz") == 0


def test_non_overlapping(tmp_path, capsys, good_pair):
    write_image(_volume(origin=(500.0, 0, 0)), tmp_path / "far.nrrd")
    err = _run_cli_expect_error(tmp_path, capsys, good_pair[0], tmp_path / "far.nrrd")
    assert "do not overlap in physical space" in err


def test_unknown_device(tmp_path, capsys, good_pair):
    err = _run_cli_expect_error(tmp_path, capsys, good_pair[0], good_pair[1], "--device", "tpu")
    assert "unknown device 'tpu'" in err


def test_cuda_without_cuda_is_clear():
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match="no CUDA device"):
        resolve_device("cuda")


def test_unknown_method_option(good_pair):
    with pytest.raises(InputError, match="unknown option"):
        register(read_image(good_pair[0]), read_image(good_pair[1]), "nmi", "cpu", bogus=1)


def test_api_leaves_arrays_untouched(good_pair):
    fixed, moving = read_image(good_pair[0]), read_image(good_pair[1])
    f0, m0 = fixed.array.copy(), moving.array.copy()
    whole = fixed.with_array(np.ones_like(fixed.array))  # noise images: no automatic head foreground
    register(fixed, moving, "nmi", "cpu", fixed_mask=whole, moving_mask=moving.with_array(np.ones_like(moving.array)),
             levels="2", max_points=2000, init="none", confidence=False)
    assert np.array_equal(fixed.array, f0) and np.array_equal(moving.array, m0)


def test_out_of_memory_is_a_clear_error(good_pair, monkeypatch):
    from DeepRegistrationLib.rigid import nmi_method

    def exhausted(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(nmi_method, "run", exhausted)
    with pytest.raises(InputError, match="out of memory on cpu registering a 16 x 14 x 12 volume"):
        register(read_image(good_pair[0]), read_image(good_pair[1]), "nmi", "cpu")
