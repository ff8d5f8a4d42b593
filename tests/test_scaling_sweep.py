"""`--mode=scaling_sweep`'s planning, answer and plot, without training anything (the sweep itself
runs from the claim pipeline's trained workdir in tests/test_claim_pipeline.py)."""

import pytest

from diffusion_jax.apps import scaling_sweep
from diffusion_jax.core.bad_input import BadInputError
from diffusion_jax.core.run_layout import RunLayout
from tests.helpers import load_config, tiny_config


def test_the_points_are_multiples_of_the_real_identities_times_images_per_identity():
    sweep = load_config("demo").sweep
    assert (tuple(sweep.identity_multiples), tuple(sweep.images_per_identity)) == (
        (1, 2, 4),
        (10, 20),
    )
    points = scaling_sweep.sweep_points(sweep, real_identities=200)
    assert [point.name for point in points] == [
        "ids200_img10",
        "ids400_img10",
        "ids800_img10",
        "ids200_img20",
        "ids400_img20",
        "ids800_img20",
    ]
    assert [point.identity_multiple for point in points[:3]] == [1, 2, 4]
    sweep.identity_multiples = (0.5, 1.5)
    assert [p.identities for p in scaling_sweep.sweep_points(sweep, 9)][:2] == [4, 14]  # rounded


@pytest.mark.parametrize(
    "key, value, reason",
    [
        ("identity_multiples", (), "distinct positive"),
        ("identity_multiples", (1, 1), "distinct positive"),
        ("identity_multiples", (0, 1), "distinct positive"),
        ("identity_multiples", (0.1, 1), "leaves 1 synthetic identities"),
        ("identity_multiples", (0.5, 0.55), "round to the same number twice"),
        ("images_per_identity", (1,), "the largest at least 2"),
        ("images_per_identity", (2, 2), "distinct positive integers"),
        ("images_per_identity", (0, 3), "distinct positive integers"),
    ],
)
def test_points_that_make_no_training_set_are_refused_naming_the_key(key, value, reason):
    sweep = tiny_config().sweep
    sweep[key] = value
    with pytest.raises(BadInputError, match=rf"config\.sweep\.{key}.*{reason}"):
        scaling_sweep.sweep_points(sweep, real_identities=8)


def test_the_generation_is_the_largest_point_with_the_workdir_settings(tmp_path):
    config = tiny_config(str(tmp_path))
    config.sweep.identity_multiples, config.sweep.images_per_identity = (1, 2), (2, 5)
    layout = RunLayout.from_config(str(tmp_path / "run"), config)
    points = scaling_sweep.sweep_points(config.sweep, real_identities=8)
    generation = scaling_sweep.generation_config(config, layout, points)
    assert (generation.generate.num_identities, generation.generate.images_per_identity) == (16, 5)
    assert generation.generate.output_dir == str(tmp_path / "run" / "sweep" / "generated")
    assert generation.generate.candidates_per_identity == config.sweep.candidates_per_identity
    changed = {
        key for key, value in generation.generate.to_dict().items() if value != config.generate[key]
    }
    assert changed == {
        "num_identities",
        "images_per_identity",
        "output_dir",
        "candidates_per_identity",
    }
    assert generation.sample.to_dict() == config.sample.to_dict()
    config.sweep.candidates_per_identity = 0  # the workdir's own
    kept = scaling_sweep.generation_config(config, layout, points).generate
    assert kept.candidates_per_identity == config.generate.candidates_per_identity
    cut = scaling_sweep.point_config(config, points[0])
    assert (cut.recognizer.num_identities, cut.recognizer.images_per_identity) == (8, 2)
    assert cut.recognizer.seed == config.recognizer.seed
    assert layout.sweep.recognizer("ids8_img2").export_dir == (
        tmp_path / "run" / "sweep" / "recognizers" / "ids8_img2" / "encoder" / "model"
    )
    assert (
        layout.sweep_cost("generation") == tmp_path / "run" / "sweep" / "costs" / "generation.json"
    )


def test_the_report_set_is_verified_even_when_the_config_does_not_list_it():
    config = tiny_config()
    config.evaluate.verification_sets, config.sweep.report_set = ("heldout",), "heldout@20"
    verified = scaling_sweep.verification_config(config)
    assert tuple(verified.evaluate.verification_sets) == ("heldout", "heldout@20")
    config.sweep.report_set = "heldout"
    assert tuple(scaling_sweep.verification_config(config).evaluate.verification_sets) == (
        "heldout",
    )


def _point(name, identities, per_identity, images, ratio, multiple=1):
    return {
        "name": name,
        "identities": identities,
        "identity_multiple": multiple,
        "images_per_identity": per_identity,
        "images": images,
        "sets": {
            "test@30": {
                "ratio_above_chance": ratio,
                "ratio_over_folds": {"mean": ratio or 0.0, "std": 0.1, "n": 10},
                "real_accuracy": 0.8,
                "synthetic_accuracy": 0.5 + 0.3 * (ratio or 0.0),
                "gap": 0.3 - 0.3 * (ratio or 0.0),
            }
        },
        "cost": {"seconds": 12.0},
    }


def test_the_answer_is_the_smallest_point_that_reaches_the_real_recognizer():
    points = [
        _point("ids2_img2", 2, 2, 4, 0.8),
        _point("ids4_img2", 4, 2, 8, 1.0, 2),
        _point("ids2_img3", 2, 3, 6, 1.2),
        _point("ids4_img3", 4, 3, 12, 1.1, 2),
    ]
    answer = scaling_sweep.headline(points, "test@30")
    assert answer["points_reaching_ratio_1"] == ["ids2_img3", "ids4_img2", "ids4_img3"]
    assert answer["smallest_point_reaching_ratio_1"] == "ids2_img3"  # 6 images
    assert (answer["best_point"], answer["best_ratio"]) == ("ids2_img3", 1.2)
    below = scaling_sweep.headline(points[:1], "test@30")
    assert below["smallest_point_reaching_ratio_1"] is None
    assert (
        below["answer"]
        == "No point reaches ratio 1.0 on test@30; the highest is 0.800, at ids2_img2."
    )
    at_chance = scaling_sweep.headline([_point("ids2_img2", 2, 2, 4, None)], "test@30")
    assert at_chance["best_point"] is None and "at chance" in at_chance["answer"]


def test_the_plot_and_the_table_show_every_point(tmp_path):
    from diffusion_jax.core.figures import save_figure

    points = [
        _point("ids2_img2", 2, 2, 4, 0.8, 1),
        _point("ids4_img2", 4, 2, 8, 0.9, 2),
        _point("ids2_img3", 2, 3, 6, None, 1),  # the real recogniser at chance: no marker
        _point("ids4_img3", 4, 3, 12, 1.1, 2),
    ]
    results = {"report_set": "test@30", "real": {"identities": 2}, "points": points}
    figure = scaling_sweep.scaling_figure(results)
    axis = figure.axes[0]
    assert axis.get_xscale() == "log"
    assert [label.get_text() for label in axis.get_xticklabels()] == ["1x\n2", "2x\n4"]
    pixels = save_figure(figure, tmp_path / "scaling.png")
    assert pixels.ndim == 3 and (tmp_path / "scaling.png").stat().st_size > 1000
    rows = scaling_sweep.table(results).splitlines()
    assert len(rows) == 5 and rows[0].split()[:2] == ["point", "ids"]
    assert rows[3].split()[-2] == "n/a" and rows[4].split()[-2] == "1.100"


def test_the_mode_refuses_a_workdir_without_its_trained_models(tmp_path):
    from diffusion_jax.core import stages
    from diffusion_jax.main import MODES

    config = tiny_config(str(tmp_path / "never_prepared"))
    config.condition.source = "encoder"
    with pytest.raises(stages.MissingStageOutput, match="--mode=train_encoder"):
        MODES["scaling_sweep"](config, str(tmp_path / "run"))
    assert not (tmp_path / "never_prepared").exists()  # refused before reading any data
