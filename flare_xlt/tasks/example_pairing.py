"""Pairing the target-language view of a split with its English (source) view, by example id, strictly."""

from __future__ import annotations

from collections import Counter

from .spec import TaskSpec

SHOWN_IDS = 5


def pair_views(task: TaskSpec, target: list[dict], source: list[dict]) -> list[dict]:
    """One record per id: the target fields as they are, the source fields as source_<field>.

    Both views must hold exactly the same ids: a missing or duplicated id raises ValueError with counts and the
    first ids, so no pair is misaligned or dropped in silence. Classification labels must agree where both views
    carry one. QA answers come from the target view (in the target context); the source view's are kept as
    source_answers.
    """
    for side, records in (("target", target), ("source", source)):
        duplicated = [example_id for example_id, count in Counter(r["id"] for r in records).items() if count > 1]
        if duplicated:
            raise ValueError(
                f"{task.name}: {len(duplicated)} ids occur more than once in the {side} view "
                f"(first: {duplicated[:SHOWN_IDS]})."
            )
    source_by_id = {record["id"]: record for record in source}
    target_ids = [record["id"] for record in target]
    only_target = [example_id for example_id in target_ids if example_id not in source_by_id]
    target_id_set = set(target_ids)
    only_source = [record["id"] for record in source if record["id"] not in target_id_set]
    if only_target or only_source:
        raise ValueError(
            f"{task.name}: the views do not pair one to one: {len(target)} target and {len(source)} source "
            f"examples; {len(only_target)} ids only in the target view (first: {only_target[:SHOWN_IDS]}), "
            f"{len(only_source)} only in the source view (first: {only_source[:SHOWN_IDS]})."
        )

    pairs, disagreeing, unlabelled = [], [], []
    for record in target:
        partner = source_by_id[record["id"]]
        pair = {"id": record["id"], "language": record["language"]}
        pair.update({name: record[name] for name in task.text_fields})
        pair.update({f"source_{name}": partner[name] for name in task.text_fields})
        if task.kind == "classification":
            labels = {side["label"] for side in (record, partner) if "label" in side}
            if len(labels) > 1:
                disagreeing.append(record["id"])
            if not labels:
                unlabelled.append(record["id"])
            pair["label"] = labels.pop() if labels else None
        else:
            pair["answers"] = record.get("answers")
            pair["source_answers"] = partner.get("answers")
        pairs.append(pair)
    if unlabelled:
        raise ValueError(
            f"{task.name}: {len(unlabelled)} pairs have a label in neither view (first: {unlabelled[:SHOWN_IDS]})."
        )
    if disagreeing:
        raise ValueError(
            f"{task.name}: {len(disagreeing)} pairs carry different labels in the two views "
            f"(first: {disagreeing[:SHOWN_IDS]})."
        )
    return pairs
