"""One service's part of a work order's trail, and the erasure of a person's name from it."""

from __future__ import annotations

import json

from prognos.api.common.v1 import audit_pb2
from prognos.core import audit, people
from prognos.core.audit_api import AuditServicer
from prognos.core.store import EventStore


async def _entry(store: EventStore, action: str, subject: str, **details: object) -> None:
    async with store.transaction(actor="user:test") as uow:
        await uow.audit(action, subject, reason=action, details=details)


async def _lineage_and_orders(store: EventStore) -> None:
    await _entry(store, "training_run.queued", "training_run/run-1", dataset_snapshot_id="snap-1")
    await _entry(store, "model_version.registered", "model_version/m-v1", training_run_id="run-1")
    await _entry(store, "alias.promoted", "alias/m/champion", to="m-v1", **{"from": ""})
    await _entry(store, "training_run.queued", "training_run/run-2")  # another model's
    await _entry(
        store, "work_order.proposed", "work_order/wo-1", prediction_id="p-1", model_version="m-v1"
    )
    await _entry(
        store, "work_order.proposed", "work_order/wo-2", prediction_id="p-2", model_version="m-v1"
    )


async def test_a_part_follows_lineage_but_not_into_other_work_orders(store: EventStore) -> None:
    await _lineage_and_orders(store)
    servicer = AuditServicer(store)

    order = await servicer.GetTrail(audit_pb2.GetTrailRequest(work_order_id="wo-1"), None)  # type: ignore[arg-type]
    lineage = await servicer.GetTrail(
        audit_pb2.GetTrailRequest(references=["model_version/m-v1"]),
        None,  # type: ignore[arg-type]
    )

    assert [s.subject for s in order.steps] == ["work_order/wo-1"]
    assert {"prediction/p-1", "model_version/m-v1"} <= set(order.references)
    assert [s.action for s in lineage.steps] == [
        "training_run.queued",
        "model_version.registered",
        "alias.promoted",
        "work_order.proposed",
        "work_order.proposed",
    ]
    assert "training_run/run-2" not in {s.subject for s in lineage.steps}
    assert "dataset_snapshot/snap-1" in lineage.references
    assert order.chain.ok and order.chain.entries == 6


async def test_an_erased_name_leaves_the_trail_and_the_chain_verifies(store: EventStore) -> None:
    async with store.transaction(actor="user:erp") as uow:
        ref = await people.person_ref(uow.conn, "Erika Mustermann")
        assert await people.person_ref(uow.conn, "Erika Mustermann") == ref
        await uow.audit(
            "work_order.acknowledged", "work_order/wo-1", details={"acknowledged_by": ref}
        )
    servicer = AuditServicer(store)
    request = audit_pb2.GetTrailRequest(work_order_id="wo-1")

    before = await servicer.GetTrail(request, None)  # type: ignore[arg-type]
    erased = await servicer.ErasePerson(
        audit_pb2.ErasePersonRequest(person="Erika Mustermann", reason="request 17"),
        None,  # type: ignore[arg-type]
    )
    after = await servicer.GetTrail(request, None)  # type: ignore[arg-type]

    assert [(p.ref, p.name, p.erased) for p in before.people] == [(ref, "Erika Mustermann", False)]
    assert list(erased.erased) == [ref]
    assert [(p.ref, p.name, p.erased) for p in after.people] == [(ref, "", True)]
    async with store.reader() as conn:
        verified = await audit.verify(conn)
        chain = [e async for e in audit.entries(conn)]
    assert verified.ok and verified.entries == 2
    assert (chain[-1].action, chain[-1].subject, chain[-1].reason) == (
        "person.erased",
        ref,
        "request 17",
    )
    assert "Erika" not in json.dumps([e.content() for e in chain])
    again = await servicer.ErasePerson(
        audit_pb2.ErasePersonRequest(person=ref),
        None,  # type: ignore[arg-type]
    )
    assert list(again.erased) == []
