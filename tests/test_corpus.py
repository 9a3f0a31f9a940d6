"""The subject corpus (split by subject) and SynthMorph-style synthesis, on the real offline images."""
import numpy as np
import pytest
import torch

from DeepRegistrationLib.core.errors import InputError
from DeepRegistrationLib.core.jacobian import jacobian_determinant, jacobian_statistics
from DeepRegistrationLib.core.warp import warp
from DeepRegistrationLib.data import corpus, corpus_pairs, sources, synthesis
from DeepRegistrationLib.data.synthesis import SynthesisSettings


@pytest.fixture(scope="module")
def tpm_labels():
    """SPM's 6-class whole-head label map (a train-split subject) at 4 mm."""
    labels = corpus.load_labels("ixi549-tpm", "tpm")
    return warp(labels, labels.grid.with_spacing([4.0] * 3), mode="nearest")


def test_splits_are_disjoint_by_subject_and_each_has_what_it_is_used_for():
    ids = [s.id for s in corpus.SUBJECTS]
    assert len(ids) == len(set(ids))
    splits = {split: {s.id for s in corpus.subjects(split)} for split in corpus.SPLITS}
    assert all(splits.values())
    assert not (splits["train"] & splits["validation"]) and not (splits["train"] & splits["test"]) \
        and not (splits["validation"] & splits["test"])
    # the same person is one subject: Colin27's mricron ch2 and SPM's single_subj_T1 are both 'colin27'
    assert set(corpus.subject("colin27").images) == {"t1", "spm_t1"}
    # test: two subjects with shared tissue classes (an inter-subject pair) and richer maps (AAL, ITK classes)
    assert all("tissue" in corpus.subject(i).labels for i in splits["test"]) and len(splits["test"]) >= 2
    assert "aal" in corpus.subject("colin27").labels and "kmeans6" in corpus.subject("itk-kmeans").labels
    # train: label maps for synthesis, whole heads included; validation: real intensity images
    assert {"icbm152", "ixi549-tpm"} <= splits["train"] and set(corpus_pairs.SYNTHESIS_LABELS) & splits["train"]
    assert any(corpus.subject(i).images for i in splits["validation"])
    with pytest.raises(InputError, match="unknown split"):
        corpus.subjects("holdout")


def test_labels_and_their_meaning():
    itk = corpus.load_labels("itk-kmeans", "tissue")
    t1 = corpus.load_image("itk-kmeans")
    means = [float(t1.array[itk.array == c].mean()) for c in (1, 2, 3)]
    assert means[0] < means[1] < means[2]                       # T1: CSF < GM < WM
    aal = corpus.load_labels("colin27", "aal")
    assert len(np.unique(aal.array)) == 117                     # 116 regions + background
    tpm = corpus.load_labels("ixi549-tpm", "tpm")
    head = np.isin(tpm.array, (1, 2, 3, 4, 5))
    assert 0.2 < head.mean() < 0.6 and (tpm.array == 4).sum() > 0   # a whole head, skull included
    with pytest.raises(InputError, match="has no label map"):
        corpus.load_labels("mni305", "tissue")


def test_label_synthesis_deforms_diffeomorphically_and_draws_new_contrasts(tpm_labels):
    s = SynthesisSettings()
    a = synthesis.from_labels(tpm_labels, np.random.default_rng(1), s)
    again = synthesis.from_labels(tpm_labels, np.random.default_rng(1), s)
    b = synthesis.from_labels(tpm_labels, np.random.default_rng(2), s)
    assert np.array_equal(a.image.array, again.image.array) and np.array_equal(a.labels.array, again.labels.array)
    stats = jacobian_statistics(jacobian_determinant(a.field))
    assert stats["folding_voxels"] == 0 and np.abs(a.field.displacement_mm).max() > 1.0
    assert set(np.unique(a.labels.array)) <= set(np.unique(tpm_labels.array)) | {0}   # 0: beyond the grid
    assert (a.labels.array != tpm_labels.array).mean() > 0.01  # the labels moved
    assert 0.0 <= a.image.array.min() and a.image.array.max() <= 1.0

    def label_means(x):
        return np.array([np.median(x.image.array[x.labels.array == c]) for c in range(1, 7)])

    # per-label intensities: a new random contrast per seed (order of the classes changes too)
    assert np.abs(label_means(a) - label_means(b)).max() > 0.1
    assert not np.array_equal(np.argsort(label_means(a)), np.argsort(label_means(b)))


def test_bias_field_noise_resolution_and_field_of_view_are_applied(tpm_labels):
    s = SynthesisSettings(bias_std_max=0.3, noise_std_max=0.05, fov_crop_max=0.2)
    grid = tpm_labels.grid
    spreads = [synthesis.bias_field(grid, np.random.default_rng(k), s) for k in range(4)]
    assert all(b.min() > 0 for b in spreads)
    assert all(1.05 < b.max() / b.min() < 10 for b in spreads)   # smooth multiplicative fields of random strength
    assert np.ptp([b.max() / b.min() for b in spreads]) > 0.5
    ramp = np.broadcast_to(np.linspace(0.2, 0.8, grid.shape[2], dtype=np.float32), grid.shape).copy()
    out = synthesis.appearance(ramp, grid, np.random.default_rng(4), SynthesisSettings(bias_std_max=0.0,
                                                                                       fov_crop_max=0.2))
    kept = out.any(axis=(1, 2))
    assert 0.6 < kept.mean() < 1.0                               # the field of view lost axial planes
    z = np.flatnonzero(kept)[len(np.flatnonzero(kept)) // 2]
    assert 0.002 < np.diff(out[z, 10:-10, 10:-10], axis=0).std()  # the ramp is constant along y: noise
    smooth = synthesis.random_resolution(np.random.default_rng(5).random(grid.shape).astype(np.float32),
                                         np.random.default_rng(6), SynthesisSettings(resolution_max_factor=3.0))
    assert smooth.std() < 0.25                                   # white noise (std 0.29) loses detail


def test_image_synthesis_keeps_labels_aligned_and_is_seeded():
    t1 = sources.spm_avg152("T1")
    grid = t1.grid.with_spacing([4.0] * 3)
    image = warp(t1, grid)
    labels = warp(corpus.load_labels("icbm152", "tissue"), grid, mode="nearest")
    a = synthesis.from_image(image, np.random.default_rng(7), SynthesisSettings(), labels)
    b = synthesis.from_image(image, np.random.default_rng(7), SynthesisSettings(), labels)
    assert np.array_equal(a.image.array, b.image.array)
    wm, csf = a.image.array[a.labels.array == 3], a.image.array[a.labels.array == 1]
    assert np.median(wm) > np.median(csf)                         # a T1 stays a T1 after its gamma


def test_corpus_pairs_draw_from_their_split_only_and_record_provenance():
    grid_of = corpus_pairs.isotropic_grid(6.0)
    train = corpus_pairs.CorpusPairs("train", "mixed", grid_of, min_size_vox=8)
    val = corpus_pairs.CorpusPairs("validation", "images", grid_of, min_size_vox=8)
    assert set(train.subject_ids) <= {s.id for s in corpus.subjects("train")}
    assert set(val.subject_ids) <= {s.id for s in corpus.subjects("validation")} and val.subject_ids
    fixed, moving = train.subject_pair(np.random.default_rng(0))
    assert fixed.image.grid.same_as(moving.image.grid) and not np.array_equal(fixed.image.array, moving.image.array)
    val.subject_pair(np.random.default_rng(1))
    record = train.provenance(val)
    assert len(record["train_subjects"]) == 1 and set(record["train_subjects"]) <= set(train.subject_ids)
    assert len(record["validation_subjects"]) == 1 and record["available_validation_subjects"] == val.subject_ids
    assert record["synthesis"]["gamma_std"] == 0.25 and record["code"]
    assert not set(record["train_subjects"]) & {s.id for s in corpus.subjects("test")}


def test_deepsim_corpus_pairs_join_subjects_of_one_grid_only():
    """DeepSim's corpus volumes come from sources of different sizes and fields of view: a pair joins two
    subjects on one grid, so its two crops cover the same place (the pair batches stack)."""
    from DeepRegistrationLib.training.deepsim_data import VolumeSet
    source = corpus_pairs.CorpusPairs("train", "synthmorph", corpus_pairs.isotropic_grid(6.0), need_tissue=True)
    volumes = VolumeSet.from_corpus(source, 8, 3, (24, 32, 24), seed=0)
    shapes = [img.shape for img, _ in volumes.volumes]
    assert len(set(shapes)) > 1                               # the test draws from sources on different grids
    assert volumes.pairs and all(shapes[i] == shapes[j] for i, j in volumes.pairs)
    moving, fixed, moving_labels, fixed_labels = volumes.sample_pairs(16, torch.Generator().manual_seed(0))
    assert moving.shape == fixed.shape == (16, 1, 24, 32, 24) and moving_labels.shape == (16, 24, 32, 24)


def test_trainers_record_corpus_subjects_synthesis_and_code(tmp_path, capsys):
    from DeepRegistrationLib.cli import main
    from DeepRegistrationLib.models.model_file import load_model

    out = tmp_path / "diffeo.pt"
    assert main(["train-diffeo", "--corpus", "synthmorph", "--out", str(out), "--spacing-mm", "6",
                 "--patch-size", "16", "--batch-size", "2", "--volumes-at-once", "2", "--patches-per-volume", "1",
                 "--groups-per-epoch", "1", "--channels", "2", "--epochs", "1",
                 "--progress-json"]) == 0
    out_dirnet = tmp_path / "dirnet.pt"
    assert main(["train-dirnet", "--corpus", "images", "--out", str(out_dirnet), "--dim", "2", "--size", "32,32",
                 "--spacing-mm", "6,6", "--channels", "2", "--conv-layers", "2", "--downsamplings", "2",
                 "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "1", "--corpus-pairs", "1",
                 "--progress-json"]) == 0
    capsys.readouterr()
    test_ids = {s.id for s in corpus.subjects("test")}
    for path, kind, mode in ((out, "diffeo", "synthmorph"), (out_dirnet, "dirnet", "images")):
        training = load_model(path, kind)[1]["training"]
        record = training["corpus"]
        assert record["mode"] == mode and record["code"] == training["code"] and record["code"]
        assert set(record["train_subjects"]) <= {s.id for s in corpus.subjects("train")} and record["train_subjects"]
        assert record["validation_subjects"]
        assert set(record["validation_subjects"]) <= {s.id for s in corpus.subjects("validation")}
        assert not (set(record["train_subjects"]) | set(record["validation_subjects"])) & test_ids
        assert record["synthesis"]["label_mean_range"] == [25.0, 225.0]


def test_metric_cases_come_from_their_split_stay_aligned_and_are_misregistered_by_the_task():
    """The learned metric's corpus cases: sources by split (no subject in two), aligned modalities under the
    identity truth, the task's misregistration otherwise, and the gradient magnitude as T1-GM's moving image."""
    from DeepRegistrationLib.data.corpus_pairs import METRIC_SOURCES, corpus_metric_case, metric_sources
    from DeepRegistrationLib.data.synthetic import gradient_magnitude

    ids = {split: {s[0] for s in METRIC_SOURCES[split]} for split in METRIC_SOURCES}
    assert all(corpus.subject(i).split == split for split in ids for i in ids[split])
    assert [s[0] for s in metric_sources("validation", "t1-t2")] == ["robex-atlas"]   # mni305 has no T2 nor tissue
    source = METRIC_SOURCES["train"][0]
    fixed, moving, true = corpus_metric_case(source, "t1-gm", np.random.default_rng(0), SynthesisSettings(),
                                             misregister=False)
    assert np.allclose(true.matrix4(), np.eye(4))
    assert fixed.grid.spacing.tolist() == [2.0] * 3 and 0.0 <= fixed.array.min() and fixed.array.max() <= 1.0
    assert np.allclose(moving.array, gradient_magnitude(fixed).array, atol=1e-4)
    fixed, moving, true = corpus_metric_case(source, "t1-t2", np.random.default_rng(1), SynthesisSettings())
    assert 1.0 <= np.abs(true.translation_mm).min() and np.abs(true.translation_mm).max() <= 20.0
    assert np.abs(true.angles_rad).max() <= 0.2
    same_fixed, aligned, _ = corpus_metric_case(source, "t1-t2", np.random.default_rng(1), SynthesisSettings(),
                                                misregister=False)
    assert np.array_equal(fixed.array, same_fixed.array)
    back = warp(moving, fixed.grid, true)          # moving(T(x)) = the aligned T2 at x
    inside = warp(moving.with_array(np.ones_like(moving.array)), fixed.grid, true).array > 0.999
    assert np.abs(back.array - aligned.array)[inside].mean() < 0.02


def test_train_metric_on_the_corpus_records_its_cases_and_selects_on_validation_subjects(tmp_path, capsys):
    from DeepRegistrationLib.cli import main
    from DeepRegistrationLib.models.model_file import read_metadata

    out = tmp_path / "metric.pt"
    assert main(["train-metric", "--corpus", "t1-gm", "--cases", "2", "--validation-cases", "1",
                 "--corpus-spacing-mm", "6", "--out", str(out), "--epochs", "1", "--device", "cpu", "--progress-json",
                 "--stages", "1:4", "--base-spacing-mm", "6", "--patch-size", "7", "--channels", "4,4,4",
                 "--pairs-per-epoch", "64", "--validation-pairs", "32", "--dithers", "2", "--realign-patches", "8",
                 "--realign-evaluations", "5", "--selection-starts", "1", "--no-final-realign"]) == 0
    capsys.readouterr()
    meta = read_metadata(out)
    training = meta["training"]
    assert training["train_pairs"] == [0, 1] and training["validation_pairs"] == [2]
    assert training["pairs"][2].split("/")[0] in {s.id for s in corpus.subjects("validation")}
    assert {p.split("/")[0] for p in training["pairs"][:2]} <= {s.id for s in corpus.subjects("train")}
    record = training["corpus"]
    assert record["task"] == "t1-gm" and record["spacing_mm"] == 6.0 and training["code"]
    assert meta["stages"][0]["validation_registration_error_mm"] is not None
    with pytest.raises(SystemExit):
        main(["train-metric", "--corpus", "t1-gm", "--pairs", "x.csv", "--out", str(out)])
    assert main(["train-metric", "--corpus", "t1-gm", "--selection", "accuracy", "--out", str(out)]) == 2
