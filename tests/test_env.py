from __future__ import annotations

import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from helpers import Bright
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import papa_env
from benchmarks.faults import BROKEN_USERS, broken_user
from papa_env.env import FRAME_COLORS, PreferenceEnv
from papa_env.errors import BudgetExhaustedError, InvalidQueryError, ResetNeededError
from papa_env.oracles import Mistakes, register_oracle

# ------------------------------------------------------------------------------------------------
# a cheap user for the mechanics: likes images brighter than average


def _images(values, k: int = 10) -> np.ndarray:
    return np.stack([np.full((1, 28, 28), v, np.float32) for v in values])[:k]


# ------------------------------------------------------------------------------------------------
# registered ids


def _make(env_id: str, tiny_clip, **kwargs):
    if "CLIP" in env_id:
        kwargs["clip_model"] = tiny_clip
    return gym.make(env_id, **kwargs)


@pytest.mark.parametrize("env_id", sorted(papa_env.ENV_IDS))
def test_gymnasium_and_sb3_check_env(env_id: str, tiny_clip) -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    for mode in ("binary", "pairwise"):
        env = _make(env_id, tiny_clip, render_mode="rgb_array", mode=mode)
        check_env(env.unwrapped)
        sb3_check_env(env.unwrapped, warn=True)


@pytest.mark.parametrize("env_id", sorted(papa_env.ENV_IDS))
def test_same_seed_same_rollout(env_id: str, tiny_clip) -> None:
    def rollout(seed: int) -> list[np.ndarray]:
        env = _make(env_id, tiny_clip, feedback_budget=40, queries_per_step=10, mistake_rate=0.3)
        env.reset(seed=seed)
        env.action_space.seed(123)
        return [env.step(env.action_space.sample())[0]["replies"] for _ in range(4)]

    a, b = rollout(1), rollout(1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_make_vec_sync() -> None:
    envs = gym.make_vec("PAPA-MNIST-v0", num_envs=2, vectorization_mode="sync", queries_per_step=4, feedback_budget=8)
    obs, _ = envs.reset(seed=0)
    assert obs["replies"].shape == (2, 4) and obs["replies_left"].tolist() == [[8.0], [8.0]]
    obs, reward, term, trunc, _ = envs.step(envs.action_space.sample())
    assert reward.shape == (2,) and obs["replies_left"].tolist() == [[4.0], [4.0]]
    envs.close()


def test_default_tastes_are_the_authors() -> None:
    assert gym.make("PAPA-MNIST-v0").unwrapped.oracle.preference == (1, 4, 7, 9)
    fashion = gym.make("PAPA-FashionMNIST-v0").unwrapped
    assert fashion.oracle.preference == (5, 7, 9) and fashion.base_model == "fashion-mnist-ddpm"


# ------------------------------------------------------------------------------------------------
# session mechanics


def test_budget_replies_reward_and_truncation() -> None:
    env = PreferenceEnv(Bright, feedback_budget=20, queries_per_step=4)
    obs, info = env.reset(seed=0)
    assert obs["replies_left"].item() == 20 and info["preference"] == "bright"
    action = _images([0.5, -0.5, 0.2, -0.9])
    for step in range(5):
        obs, reward, terminated, truncated, info = env.step(action)
        assert obs["replies"].tolist() == [1, -1, 1, -1]
        assert reward == 0.0 and isinstance(reward, float)
        assert terminated is False and truncated is (step == 4)
        assert info["replies_left"] == 20 - 4 * (step + 1)
    with pytest.raises(BudgetExhaustedError, match="reset"):
        env.step(action)
    env.reset()
    assert env.replies_left == 20


def test_pairwise_replies_follow_utility() -> None:
    env = PreferenceEnv(Bright, mode="pairwise", feedback_budget=6, queries_per_step=3)
    env.reset(seed=0)
    pairs = np.stack([_images([0.5, -0.5], 2), _images([-0.5, 0.5], 2), _images([0.1, 0.1], 2)])
    obs, reward, *_ = env.step(pairs)
    assert obs["replies"].tolist() == [1, -1, 0]
    assert env.action_space.shape == (3, 2, 1, 28, 28)


def test_reset_options_pick_the_taste_and_reset_restores_it() -> None:
    env = PreferenceEnv(Bright, feedback_budget=8, queries_per_step=4)
    action = _images([0.5, 0.5, 0.5, 0.5])
    env.reset(seed=0, options={"preference": "dark"})
    assert env.step(action)[0]["replies"].tolist() == [-1] * 4
    env.reset(seed=0)
    assert env.step(action)[0]["replies"].tolist() == [1] * 4
    with pytest.raises(ValueError, match="'bright' or 'dark'"):
        env.reset(options={"preference": "green"})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"budget": 3})


def test_mnist_user_taste_via_reset_and_kwargs() -> None:
    env = gym.make("PAPA-MNIST-v0", preference=(0, 2))
    assert env.unwrapped.oracle.preference == (0, 2)
    env.reset(options={"preference": [3]})
    assert env.unwrapped.oracle.preference == (3,)
    env.reset()
    assert env.unwrapped.oracle.preference == (0, 2)


def test_privileged_access_spends_nothing() -> None:
    env = PreferenceEnv(Bright, feedback_budget=8, queries_per_step=4)
    env.reset(seed=0)
    imgs = _images([0.5, -0.5, 0.2, -0.9])
    assert env.privileged.like_rate(imgs) == 0.5
    assert env.privileged.utility(torch.from_numpy(imgs)).shape == (4,)
    assert env.replies_left == 8


def test_render_frames_follow_replies() -> None:
    env = PreferenceEnv(Bright, feedback_budget=8, queries_per_step=2, render_mode="rgb_array")
    env.reset(seed=0)
    blank = env.render()
    env.step(_images([0.5, -0.5], 2))
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape == blank.shape
    # the top-left pixel of each tile's frame (2-px gap, 2-px frame, 56-px zoomed tile)
    assert tuple(frame[2, 2]) == FRAME_COLORS[1]
    assert tuple(frame[2, 2 + 60 + 2]) == FRAME_COLORS[-1]


# ------------------------------------------------------------------------------------------------
# bad input: clear errors, nothing spent


def test_step_or_render_before_reset() -> None:
    env = PreferenceEnv(Bright, render_mode="rgb_array")
    with pytest.raises(ResetNeededError, match="reset"):
        env.step(env.action_space.sample())
    with pytest.raises(ResetNeededError):
        env.render()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(preference=(11,)), "unknown class"),
        (dict(preference=()), "empty"),
        (dict(preference="abc"), "class indices"),
        (dict(queries_per_step=0), "queries_per_step"),
        (dict(feedback_budget=25), "multiple"),
        (dict(feedback_budget=5), "feedback_budget"),
        (dict(feedback_budget=True), "feedback_budget"),
        (dict(queries_per_step=True), "queries_per_step"),
        (dict(mode="triplet"), "mode"),
        (dict(dataset="cifar10"), "dataset"),
        (dict(mistake_rate=1.5), "mistake_rate.* a probability"),
        (dict(skip_margin=-1), "skip_margin"),
        (dict(tie_margin=-0.5), "tie_margin"),
        (dict(rationality=0), "rationality"),
        (dict(oracle="nobody"), "unknown oracle"),
    ],
)
def test_bad_construction(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        gym.make("PAPA-MNIST-v0", **kwargs)


_K = 4


def _malformed_actions():
    shape = (_K, 1, 28, 28)
    good = hnp.arrays(np.float32, shape, elements=st.floats(-1, 1, width=32))
    return st.one_of(
        hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=5, max_side=6)),  # wrong shape
        hnp.arrays(st.sampled_from([np.int32, np.uint8, np.bool_, np.int64]), shape),  # wrong dtype
        good.map(lambda a: _poke(a, np.nan)),
        good.map(lambda a: _poke(a, np.inf)),
        st.floats(1.01, 1e6).flatmap(lambda v: good.map(lambda a: _poke(a, v))),  # out of range
        st.floats(-1e6, -1.01).flatmap(lambda v: good.map(lambda a: _poke(a, v))),
        st.sampled_from([None, "images", [0.0, 1.0], 3.0]),  # not an array
    )


def _poke(a: np.ndarray, value: float) -> np.ndarray:
    a = a.copy()
    a.flat[len(a.flat) // 2] = value
    return a


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(action=_malformed_actions())
def test_fuzzed_bad_actions_raise_and_spend_nothing(action) -> None:
    env = PreferenceEnv(Bright, feedback_budget=8, queries_per_step=_K)
    env.reset(seed=0)
    with pytest.raises(InvalidQueryError, match="expected"):
        env.step(action)
    assert env.replies_left == 8 and env.replies_spent == 0


def test_invalid_query_error_is_a_value_error_and_gym_invalid_action() -> None:
    assert issubclass(InvalidQueryError, ValueError) and issubclass(InvalidQueryError, gym.error.InvalidAction)


def test_float64_and_torch_actions_are_accepted() -> None:
    env = PreferenceEnv(Bright, feedback_budget=8, queries_per_step=_K)
    env.reset(seed=0)
    env.step(np.zeros((_K, 1, 28, 28), np.float64))
    env.step(torch.zeros(_K, 1, 28, 28))
    assert env.replies_left == 0


# ------------------------------------------------------------------------------------------------
# plugging in users


def test_plug_in_by_class_instance_and_name() -> None:
    assert gym.make("PAPA-MNIST-v0", oracle=Bright).unwrapped.oracle.preference == "bright"
    assert gym.make("PAPA-MNIST-v0", oracle=Bright(preference="dark")).unwrapped.oracle.preference == "dark"
    register_oracle("bright-test", Bright)
    env = gym.make("PAPA-MNIST-v0", oracle="bright-test", mistake_rate=0.1)
    assert isinstance(env.unwrapped.oracle, Mistakes) and isinstance(env.unwrapped.oracle.unwrapped, Bright)


def test_plug_in_by_entry_point(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "my_users.py"
    pkg.write_text(
        textwrap.dedent("""
        import torch
        from papa_env.oracles import Oracle

        class Dark(Oracle):
            threshold = 0.0
            preference = "dark"
            def set_preference(self, preference):
                pass
            def utility(self, images):
                return -images.mean((1, 2, 3))
    """)
    )
    dist = tmp_path / "my_users-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-users\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[papa_env.oracles]\ndark-user = my_users:Dark\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from papa_env.oracles import registered_oracles

    assert "dark-user" in registered_oracles()
    env = gym.make("PAPA-MNIST-v0", oracle="dark-user", queries_per_step=2, feedback_budget=2)
    env.reset(seed=0)
    assert env.step(_images([-0.5, 0.5], 2))[0]["replies"].tolist() == [1, -1]
    sys.modules.pop("my_users", None)


# ------------------------------------------------------------------------------------------------
# misbehaving users are refused before any budget is spent


@pytest.mark.parametrize("case", sorted(BROKEN_USERS))
def test_a_misbehaving_user_is_refused_before_spending_budget(case: str, tmp_path) -> None:
    """Every misbehaving user of the fault benchmark's list."""
    from papa_env.errors import OracleError
    from papa_env.wrappers import ReplyLog

    user, mode = broken_user(case)
    env = ReplyLog(PreferenceEnv(user, queries_per_step=4, feedback_budget=8, mode=mode), tmp_path)
    env.reset(seed=0)
    state = env.unwrapped.get_state()
    with pytest.raises(OracleError, match="Broken"):
        env.step(np.zeros(env.action_space.shape, np.float32))
    assert env.unwrapped.replies_left == 8 and env.unwrapped.get_state() == state  # nothing spent or drawn
    assert not (tmp_path / "replies.jsonl").exists()  # nothing persisted


def test_a_user_returning_numpy_utilities_is_accepted() -> None:
    class Numpy(Bright):
        def utility(self, images):
            return images.mean((1, 2, 3)).numpy()

    env = PreferenceEnv(Numpy(), queries_per_step=2, feedback_budget=2)
    env.reset(seed=0)
    assert env.step(_images([0.5, -0.5], 2))[0]["replies"].tolist() == [1, -1]


def test_noise_wrappers_check_the_utility_they_read() -> None:
    from papa_env.errors import OracleError

    user, _ = broken_user("utility NaN")
    env = PreferenceEnv(user, queries_per_step=2, feedback_budget=2, rationality=1.0)
    env.reset(seed=0)
    with pytest.raises(OracleError):
        env.step(_images([0.5, -0.5], 2))


# ------------------------------------------------------------------------------------------------
# smaller promises


def test_stepping_before_reset_through_gym_make_raises_our_error() -> None:
    env = gym.make("PAPA-MNIST-v0")
    with pytest.raises(ResetNeededError):
        env.step(env.action_space.sample())


@pytest.mark.parametrize("preference", [(1.5,), (True,), ("1",), 3, "13"])
def test_a_preference_that_is_not_class_indices_is_refused(preference) -> None:
    with pytest.raises(ValueError, match="class indices"):
        gym.make("PAPA-MNIST-v0", preference=preference)


def test_a_bfloat16_or_half_torch_action_is_accepted_as_float32() -> None:
    env = PreferenceEnv(Bright(), queries_per_step=2, feedback_budget=4)
    env.reset(seed=0)
    for dtype in (torch.bfloat16, torch.float16):
        obs, *_ = env.step(torch.full((2, 1, 28, 28), 0.5, dtype=dtype))
        assert obs["replies"].tolist() == [1, 1]
    env.reset(seed=0)
    with pytest.raises(InvalidQueryError, match="floating"):
        env.step(torch.zeros(2, 1, 28, 28, dtype=torch.int32))


def test_state_round_trips_and_a_foreign_state_is_refused() -> None:
    env = PreferenceEnv(Bright(), queries_per_step=2, feedback_budget=4, mistake_rate=0.5)
    env.reset(seed=0)
    env.step(_images([0.5, -0.5], 2))
    state = env.get_state()
    after = env.step(_images([0.5, -0.5], 2))[0]["replies"].tolist()
    other = PreferenceEnv(Bright(), queries_per_step=2, feedback_budget=4, mistake_rate=0.5)
    other.reset(seed=5)
    other.set_state(state)
    assert other.replies_left == 2 and other.step(_images([0.5, -0.5], 2))[0]["replies"].tolist() == after
    for bad in ({}, {**state, "replies_spent": 3}, {**state, "np_random": {"bit_generator": "load"}}):
        with pytest.raises(ValueError, match="PreferenceEnv state|does not fit"):
            other.set_state(bad)


def test_an_entry_point_user_receives_the_dataset_and_the_taste_through_set_preference(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "my_users2.py"
    pkg.write_text(
        textwrap.dedent("""
        from papa_env.oracles import Oracle

        class Picky(Oracle):
            threshold = 0.0
            def __init__(self, dataset):
                self.dataset, self.taste = dataset, "bright"
            @property
            def preference(self):
                return self.taste
            def set_preference(self, preference):
                self.taste = preference
            def utility(self, images):
                m = images.mean((1, 2, 3))
                return m if self.taste == "bright" else -m
    """)
    )
    dist = tmp_path / "my_users2-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-users2\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[papa_env.oracles]\npicky = my_users2:Picky\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = gym.make("PAPA-FashionMNIST-v0", oracle="picky", preference="dark", queries_per_step=2, feedback_budget=2)
    user = env.unwrapped.oracle
    assert user.dataset == "fashion-mnist" and user.preference == "dark"  # __init__ takes no preference: set after
    env.reset(seed=0)
    assert env.step(_images([-0.5, 0.5], 2))[0]["replies"].tolist() == [1, -1]
    sys.modules.pop("my_users2", None)


def test_the_oracle_docstring_states_the_whole_protocol() -> None:
    from papa_env.oracles import Oracle

    doc = Oracle.__doc__
    for promise in ("abstract", "torch", "every** ``reset()``", "set_preference", "dataset", "OracleError"):
        assert promise in doc, promise
