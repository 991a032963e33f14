from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from PIL import Image

from papa_env.agents.papa import PRESETS
from papa_env.cli import field_docs, main
from papa_env.models import save_model
from papa_env.pretrain import ClassifierTrainConfig, DDPMTrainConfig
from papa_env.viz import grid_array


def test_every_config_field_has_a_help_line() -> None:
    for cls in (DDPMTrainConfig, ClassifierTrainConfig):
        docs = field_docs(cls)
        missing = [f for f in cls.__dataclass_fields__ if not docs.get(f)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_pretrain_help_comes_from_the_dataclass(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "ddpm", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "total optimizer steps" in out and "--checkpoint-every" in out


def test_bad_choice_is_rejected_by_argparse(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "classifier", "--arch", "ResNet"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_sample_writes_a_grid(tmp_path, tiny_unet) -> None:
    weights = tmp_path / "tiny.safetensors"
    save_model(tiny_unet, weights)
    out = tmp_path / "grid.png"
    assert main(["sample", "--model", str(weights), "--n", "4", "--steps", "2", "--out", str(out)]) == 0
    img = Image.open(out)
    assert img.mode == "RGB" and img.size == (2 * 56 + 3 * 2,) * 2  # 2x2 tiles upscaled 2x, 2px padding


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["sample", "--model", "nope"], "--model must be"),
        (["sample", "--n", "0"], "--n must be"),
        (["sample", "--model", "missing.safetensors"], "no weights file"),
        (["demo", "--budget", "0"], "--budget must be a positive multiple of 10"),
        (["demo", "--budget", "25"], "--budget must be a positive multiple of 10"),
        (["demo", "--budget", "-10"], "--budget must be a positive multiple of 10"),
        (["run", "--budget", "15"], "--budget must be a positive multiple of 10"),
        (["run", "--lr", "-1", "--budget", "10"], "invalid PAPAConfig: lr must be > 0"),
        (["run", "--preference", "[1, 4", "--budget", "10"], "--preference must be JSON"),
        (["demo", "--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_user_errors_are_one_line_on_stderr_and_exit_code_2(argv, match, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_serve_refuses_what_it_cannot_run_before_it_serves(tmp_path, tiny_unet, capsys) -> None:
    """A folder it cannot resume and a bot's bad taste: one line, exit code 2, no server started."""
    weights = tmp_path / "tiny.safetensors"
    save_model(tiny_unet, weights)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    replied = tmp_path / "replied"  # one a person has replied in: its filter is read from that config, refused
    replied.mkdir()
    (replied / "config.json").write_text("{not json")
    (replied / "replies.jsonl").write_text('{"step": 0}\n')
    serve = ["serve", "--model", str(weights), "--out", str(folder), "--port", "0", "--budget", "10"]
    for argv, match in [
        (serve, "is not readable JSON"),
        ([*serve[:4], str(replied), *serve[5:]], "is not readable JSON"),
        (
            [*serve[:4], str(tmp_path / "new"), *serve[5:], "--bot", "classifier", "--preference", "[1, 4"],
            "--preference must be JSON",
        ),  # fmt: skip
        (
            [*serve[:4], str(tmp_path / "new"), *serve[5:], "--bot", "classifier", "--preference", "[12]"],
            "unknown class",
        ),  # fmt: skip
        ([*serve[:4], str(tmp_path / "new"), *serve[5:], "--generate-candidates", "0"], "generate_candidates"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr()
        assert match in err.err and len(err.err.strip().splitlines()) == 1, err
        assert "open http" not in err.out  # refused before the server printed its address
    assert (replied / "replies.jsonl").read_text() == '{"step": 0}\n'  # nothing of the person's touched


def test_serve_takes_the_config_fields_as_flags_over_the_preset(tmp_path, tiny_unet, capsys) -> None:
    weights = tmp_path / "tiny.safetensors"
    save_model(tiny_unet, weights)
    folder = tmp_path / "run"
    argv = f"serve --model {weights} --out {folder} --port 0 --budget 10 --seed 3 --bot classifier --preference [1]"
    argv = [*argv.split(), "--generate-candidates", "2", "--num-sampling-steps", "2"]
    assert main(argv) == 0
    assert "epapa with generate_candidates=2, num_sampling_steps=2" in capsys.readouterr().out
    saved = json.loads((folder / "config.json").read_text())["agent_config"]
    expected = {**dataclasses.asdict(PRESETS["epapa"]), "generate_candidates": 2, "num_sampling_steps": 2, "seed": 3}
    assert saved == json.loads(json.dumps(expected))
    assert len((folder / "replies.jsonl").read_text().splitlines()) == 1


FILTER = {"generate_candidates": 4, "generate_strata": 10, "generate_strata_prior": 2.0, "generate_optimism": 1.0,
          "generate_base_candidates": 4, "generate_strata_mass": True}  # fmt: skip


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], FILTER),  # a person's samples pass the agent's filter, its gate optimistic
        (["--no-filter"], {}),
        (["--generate-candidates", "3"], {"generate_candidates": 3}),  # the filter's shape given: the flags alone
        (["--generate-strata", "0"], {"generate_strata": 0}),
        (["--generate-optimism", "0"], {**FILTER, "generate_optimism": 0.0}),  # the gate's fields: over the filter
        (["--generate-strata-prior", "5"], {**FILTER, "generate_strata_prior": 5.0}),
    ],
)
def test_serve_filters_the_agents_samples_unless_told_not_to(tmp_path, tiny_unet, capsys, flags, expected) -> None:
    weights = tmp_path / "tiny.safetensors"
    save_model(tiny_unet, weights)
    folder = tmp_path / "run"
    argv = f"serve --model {weights} --out {folder} --port 0 --budget 10 --bot classifier --preference [1]"
    assert main([*argv.split(), *flags, "--num-sampling-steps", "2"]) == 0
    shown = ", ".join(f"{k}={v}" for k, v in {**expected, "num_sampling_steps": 2}.items())
    assert f"epapa with {shown} on" in capsys.readouterr().out
    saved = json.loads((folder / "config.json").read_text())["agent_config"]
    preset = dataclasses.asdict(PRESETS["epapa"])
    assert saved == json.loads(json.dumps({**preset, "num_sampling_steps": 2, **expected}))


def test_serve_resumes_a_folder_with_the_filter_it_was_started_with(tmp_path, tiny_unet, capsys) -> None:
    """A session started before the gate and the base model's shares were part of the default (its config.json
    without those fields) resumes with the same command: the folder's filter, not today's default, which the resume
    check would refuse."""
    weights = tmp_path / "tiny.safetensors"
    save_model(tiny_unet, weights)
    folder = tmp_path / "run"
    argv = f"serve --model {weights} --out {folder} --port 0 --budget 20 --bot classifier --preference [1]".split()
    assert main([*argv, "--num-sampling-steps", "2"]) == 0
    config = json.loads((folder / "config.json").read_text())
    for field in ("generate_optimism", "generate_base_candidates", "generate_strata_mass"):
        del config["agent_config"][field]  # as an earlier version wrote it
    config["agent_config"]["generate_strata_prior"] = 0.0
    (folder / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main([*argv, "--num-sampling-steps", "2"]) == 0
    out = capsys.readouterr().out
    old = "generate_strata_prior=0.0, generate_optimism=0.0, generate_base_candidates=0, generate_strata_mass=False"
    assert old in out and "bot done: done after 20 replies" in out
    fresh = tmp_path / "fresh"  # a new folder gets today's
    assert main([*argv[:4], str(fresh), *argv[5:], "--num-sampling-steps", "2", "--budget", "10"]) == 0
    today = "generate_strata_prior=2.0, generate_optimism=1.0, generate_base_candidates=4, generate_strata_mass=True"
    assert today in capsys.readouterr().out


def test_demo_out_must_be_a_writable_folder(tmp_path, capsys) -> None:
    file = tmp_path / "a-file"
    file.write_text("x")
    assert main(["demo", "--out", str(file), "--budget", "10"]) == 2
    assert "is a file" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root can write anywhere: nothing to check then
        assert main(["demo", "--out", str(locked / "run"), "--budget", "10"]) == 2
        assert "cannot write" in capsys.readouterr().err


def test_unknown_preset_is_argparses_error(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["demo", "--preset", "nope"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_run_overrides_only_the_given_fields_of_the_preset(tmp_path, capsys) -> None:
    from papa_env.agents.papa import PRESETS

    log = tmp_path / "log.jsonl"
    argv = ["run", "--preset", "epapa", "--lr", "2e-4", "--dislike-margin", "None", "--preference", "[0, 3]"]
    argv += ["--budget", "10", "--eval-every", "10", "--eval-samples", "10", "--out", str(tmp_path / "r")]
    assert main([*argv, "--log", str(log), "--seed", "3"]) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    expected = {**dataclasses.asdict(PRESETS["epapa"]), "lr": 2e-4, "dislike_margin": None, "seed": 3}
    assert config["agent_config"] == expected and config["preference"] == "(0, 3)"
    summary = json.loads(log.read_text())
    assert summary["replies"] == [0, 10] and summary["seed"] == 3 and set(summary["liked_shares_end"]) == {"0", "3"}
    assert "like-rate (judge)" in capsys.readouterr().out


def test_grid_array_layout() -> None:
    x = torch.linspace(-1, 1, 6 * 28 * 28).view(6, 1, 28, 28)
    g = grid_array(x, nrow=3, padding=2)
    assert g.shape == (2 * 28 + 3 * 2, 3 * 28 + 4 * 2, 3) and g.dtype.name == "uint8"
    with pytest.raises(ValueError, match="B, C, H, W"):
        grid_array(torch.zeros(28, 28))


def test_sample_draws_an_epapa_runs_model_the_way_its_agent_did(tmp_path) -> None:
    """The run's model.safetensors names k, the sampler and its base: papa sample gives the agent's own samples."""
    import gymnasium as gym

    from papa_env.agents.papa import PAPA, PRESETS
    from papa_env.cli import sample_images
    from papa_env.models import load_model, load_pretrained, model_metadata, save_model
    from papa_env.session import run_session

    env = gym.make("PAPA-MNIST-v0", feedback_budget=10)
    agent = PAPA(load_pretrained("mnist-ddpm"), dataclasses.replace(PRESETS["epapa"], num_sampling_steps=4))
    run_session(agent, env, tmp_path / "run", eval_every=0, progress=False)
    weights = tmp_path / "run" / "model.safetensors"
    assert model_metadata(weights)["k"] == "300" and model_metadata(weights)["base_model"] == "mnist-ddpm"
    images, kwargs = sample_images(str(weights), 4, seed=3)
    expected = agent.generate(4, torch.Generator().manual_seed(3))
    assert kwargs["num_steps"] == 4 and torch.allclose(images, expected, atol=1e-5)
    plain = load_model(weights)  # what the file alone, without its base below k, would draw: not the same images
    from papa_env.diffusion import sample

    assert not torch.allclose(sample(plain, 4, num_steps=4, generator=torch.Generator().manual_seed(3)), expected)
    other = tmp_path / "other-base.safetensors"
    save_model(load_pretrained("fashion-mnist-ddpm"), other)
    with pytest.raises(ValueError, match="not the base model"):
        sample_images(str(weights), 4, base=str(other))
    assert main(["sample", "--model", str(weights), "--n", "2", "--out", str(tmp_path / "g.png")]) == 0


def test_sample_draws_a_filtering_runs_model_through_its_agents_reward_filter(tmp_path, capsys) -> None:
    """A run whose agent kept only its reward model's predicted likes (generate_candidates > 1) is drawn as its agent
    draws: through the filter, restored from the run's checkpoint; ``--no-filter`` draws the weights alone."""
    import shutil

    import gymnasium as gym

    from papa_env.agents.papa import PAPA
    from papa_env.cli import sample_images
    from papa_env.models import load_pretrained
    from papa_env.session import run_session

    env = gym.make("PAPA-MNIST-v0", feedback_budget=20)
    cfg = dataclasses.replace(PRESETS["epapa"], num_sampling_steps=4, generate_candidates=3, generate_strata=4)
    agent = PAPA(load_pretrained("mnist-ddpm"), cfg)
    run_session(agent, env, tmp_path / "run", eval_every=0, progress=False)
    weights = str(tmp_path / "run" / "model.safetensors")
    images, _ = sample_images(weights, 6, seed=3)
    assert torch.allclose(images, agent.generate(6, torch.Generator().manual_seed(3)), atol=1e-5)
    alone, _ = sample_images(weights, 6, seed=3, filtered=False)
    assert not torch.allclose(alone, images)  # the weights alone: the first of the filter's candidates
    assert main(["sample", "--model", weights, "--n", "6", "--steps", "4", "--out", str(tmp_path / "g.png")]) == 2
    assert "add --no-filter" in capsys.readouterr().err
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    shutil.copy(weights, copy / "model.safetensors")
    assert main(["sample", "--model", str(copy / "model.safetensors"), "--out", str(tmp_path / "h.png")]) == 2
    assert "--no-filter" in capsys.readouterr().err
    argv = ["sample", "--model", str(copy / "model.safetensors"), "--no-filter", "--out", str(tmp_path / "h.png")]
    assert main(argv) == 0
