"""The registry's rules: four eyes, alias history and rollback, promotion policy, run states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from prognos.registry.domain import (
    Alias,
    AliasChangeKind,
    AliasTrack,
    InvalidCommandError,
    Lineage,
    ModelVersion,
    ModelVersionRegistered,
    NotApprovedError,
    NothingToRollBackError,
    PromotionPolicy,
    RunState,
    SelfApprovalError,
    TrainingRun,
    TrainingRunQueued,
    TrainingSource,
    Trigger,
    WrongStateError,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _version(
    trained_by: str = "user:alice", metrics: dict[str, float] | None = None
) -> ModelVersion:
    return ModelVersion.register(
        ModelVersionRegistered(
            model_version_id="pump-v1",
            asset_type="pump",
            number=1,
            metrics=metrics if metrics is not None else {"rmse": 12.0},
            lineage=Lineage(),
            artifacts=(),
            trained_by=trained_by,
            description="",
            registered_at=T0,
        )
    )


def test_the_trainer_may_not_approve_but_a_second_principal_may() -> None:
    version = _version()

    with pytest.raises(SelfApprovalError):
        version.approve("user:alice", "looks fine", T0)
    version.approve("user:bob", "looks fine", T0)

    assert (version.status, version.approved_by, version.version) == ("approved", "user:bob", 2)
    with pytest.raises(WrongStateError):
        version.approve("user:carol", "again", T0)


def test_only_an_approved_version_may_become_champion() -> None:
    version = _version()

    with pytest.raises(NotApprovedError):
        version.check_may_become_champion()
    version.approve("user:bob", "", T0)
    version.check_may_become_champion()


def test_a_version_needs_who_trained_it_and_finite_metrics() -> None:
    with pytest.raises(InvalidCommandError):
        _version(trained_by="")
    with pytest.raises(InvalidCommandError):
        _version(metrics={"rmse": float("nan")})


def test_replaying_the_events_rebuilds_the_version() -> None:
    version = _version()
    version.approve("user:bob", "ok", T0)

    again = ModelVersion.replay(list(version.pending))

    assert (again.status, again.approved_by, again.version) == (
        version.status,
        version.approved_by,
        version.version,
    )


def _track(*holders: str) -> AliasTrack:
    track = AliasTrack("pump", Alias.CHAMPION)
    for i, holder in enumerate(holders):
        track.promote(holder, f"user:{i}", f"step {i}", T0 + timedelta(hours=i))
    return track


def test_rollback_returns_to_the_holder_before_the_last_move() -> None:
    track = _track("v1", "v2")

    move = track.rollback("", "user:bob", "worse live", T0 + timedelta(hours=5))

    assert (move.from_model_version_id, move.to_model_version_id, move.kind) == (
        "v2",
        "v1",
        AliasChangeKind.ROLLED_BACK,
    )
    assert track.holder == "v1"


def test_rollback_to_a_named_version_needs_one_that_held_the_alias() -> None:
    track = _track("v1", "v2", "v3")

    with pytest.raises(NothingToRollBackError):
        track.rollback("v9", "user:bob", "", T0)
    with pytest.raises(NothingToRollBackError):
        track.rollback("v3", "user:bob", "", T0)
    assert track.rollback("v1", "user:bob", "", T0).to_model_version_id == "v1"


def test_nothing_to_roll_back_before_a_second_holder() -> None:
    with pytest.raises(NothingToRollBackError):
        _track().rollback("", "user:bob", "", T0)
    with pytest.raises(NothingToRollBackError):
        _track("v1").rollback("", "user:bob", "", T0)


def test_promoting_the_holder_again_is_refused() -> None:
    with pytest.raises(WrongStateError):
        _track("v1").promote("v1", "user:bob", "", T0)


def test_the_move_in_effect_at_a_time_names_the_holder_and_who_set_it() -> None:
    track = _track("v1", "v2", "v3")

    assert track.at(T0 - timedelta(seconds=1)) is None
    at_noon_thirty = track.at(T0 + timedelta(minutes=30))
    assert at_noon_thirty is not None
    assert (at_noon_thirty.to_model_version_id, at_noon_thirty.actor) == ("v1", "user:0")
    later = track.at(T0 + timedelta(hours=1, minutes=1))
    assert later is not None and later.to_model_version_id == "v2"
    assert track.at(T0 + timedelta(days=1)).to_model_version_id == "v3"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("candidate", "champion", "margin", "beats"),
    [
        (10.0, 12.0, 1.0, True),
        (11.0, 12.0, 1.0, True),
        (11.5, 12.0, 1.0, False),
        (12.0, 12.0, 0.0, True),
    ],
)
def test_the_policy_compares_the_same_metric_with_a_margin(
    candidate: float, champion: float, margin: float, beats: bool
) -> None:
    policy = PromotionPolicy("pump")
    policy.set(
        auto_promote=True,
        metric="rmse",
        margin=margin,
        manual_challenger=False,
        actor="user:bob",
        reason="",
        at=T0,
    )

    verdict, sentence = policy.beats({"rmse": candidate}, {"rmse": champion})

    assert verdict is beats
    assert f"{candidate:.3f}" in sentence and f"{champion:.3f}" in sentence


def test_the_policy_refuses_an_unknown_metric_or_a_negative_margin() -> None:
    policy = PromotionPolicy("pump")
    common = {
        "auto_promote": True,
        "manual_challenger": False,
        "actor": "u",
        "reason": "",
        "at": T0,
    }

    with pytest.raises(InvalidCommandError):
        policy.set(metric="accuracy", margin=1.0, **common)  # type: ignore[arg-type]
    with pytest.raises(InvalidCommandError):
        policy.set(metric="rmse", margin=-1.0, **common)  # type: ignore[arg-type]
    assert policy.beats({}, {"rmse": 1.0})[0] is False


def _run() -> TrainingRun:
    return TrainingRun.queue(
        TrainingRunQueued(
            run_id="run-1",
            asset_type="pump",
            source=TrainingSource(dataset_snapshot_id="s1", dataset_content_hash="sha256:00"),
            hyperparameters={"epochs": "1"},
            trigger=Trigger.MANUAL,
            requested_by="user:alice",
            reason="",
            queued_at=T0,
        )
    )


def test_a_run_goes_from_queued_through_running_to_succeeded() -> None:
    run = _run()
    with pytest.raises(WrongStateError):
        run.report("training", 0.5, 1, 2, {})

    run.start(T0, "host:1")
    run.report("training", 0.5, 1, 2, {"loss": 0.3, "bad": float("inf")})
    run.succeed("pump-v1", {"rmse": 11.0}, T0)

    assert run.state is RunState.SUCCEEDED
    assert (run.model_version_id, run.progress, run.phase) == ("pump-v1", 1.0, "finished")
    with pytest.raises(WrongStateError):
        run.cancel("user:alice", "", T0)


def test_a_queued_or_running_run_can_be_cancelled_once() -> None:
    run = _run()
    run.cancel("user:alice", "wrong data", T0)

    assert (run.state, run.error) == (RunState.CANCELLED, "wrong data")
    with pytest.raises(WrongStateError):
        run.start(T0, "host:1")
    with pytest.raises(WrongStateError):
        run.fail("late", T0)
    assert TrainingRun.replay(list(run.pending)).state is RunState.CANCELLED
