"""Human evaluation: work through a queue (pick with the arrow keys, Enter in the comment saves),
see the progress, and how far each LLM judge agrees with the people who labelled."""

from __future__ import annotations

import streamlit as st

from dashboard.live import refresh_on_change
from dashboard.models.annotations import AgreementReport, AgreementRow, NextItem, Queue
from dashboard.paging import paged
from dashboard.session import attempt, connect, shown

api, principal = connect()
refresh_on_change(api, "annotations")
st.title("Human evaluation")
st.caption(
    "People's labels are the gold standard: each LLM judge is shown with how far it agrees "
    "with them (Cohen's kappa: 1 is perfect, 0 is chance)."
)

queues = paged("queues", lambda token: api.page(Queue, "/annotations/queues", page_token=token))
if not queues:
    st.info(
        "No annotation queues yet: `evalhub annotate create NAME --run EVAL_RUN` labels a run's "
        "answers, `--deployment NAME --sample 50` a sample of production traffic."
    )
    st.stop()
st.dataframe(
    [
        {
            "queue": q.name,
            "kind": q.kind,
            "from": q.origin,
            "items": q.items,
            "labelled": q.labelled,
            "labels": q.labels,
            "raters": ", ".join(q.raters),
        }
        for q in queues
    ],
    hide_index=True,
    key="queues-table",
)
names = [q.name for q in queues]
linked = st.query_params.get("queue")  # ?queue=NAME links to a queue
name = st.selectbox(
    "Queue", names, index=names.index(linked) if linked in names else 0, key="queue"
)
queue = next(q for q in queues if q.name == name)


def _interval(value: float | None, low: float | None, high: float | None) -> str:
    if value is None or low is None or high is None:
        return "undefined (one label only)"
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def _rows(rows: list[AgreementRow]) -> list[dict[str, object]]:
    return [
        {
            "": row.left,
            "against": row.right,
            "labels": row.n,
            "items": row.items,
            "raw agreement [95%]": _interval(row.raw, row.raw_low, row.raw_high),
            "kappa [95%]": _interval(row.kappa, row.kappa_low, row.kappa_high),
        }
        for row in rows
    ]


label_part, agreement_part = st.columns([3, 2])
with label_part:
    st.subheader(f"Label: {queue.question}")
    if saved_note := st.session_state.pop("label-saved", None):
        st.success(saved_note)
    if not principal.is_editor:
        st.info(f"Labelling needs the editor role; you are {principal.role}.")
    else:
        step = shown(lambda: api.one(NextItem, f"/annotations/queues/{name}/next"))
        if step is not None:
            st.progress(
                step.done / step.total if step.total else 1.0,
                text=f"you have labelled {step.done} of {step.total}; "
                f"{queue.labelled} of {queue.items} have a label from someone",
            )
            item = step.item
            if item is None:
                st.success(f"You have labelled every item of {name}.")
            else:
                st.caption(f"item {item.position} · {item.source_id}")
                for message in item.prompt:
                    with st.chat_message(message.get("role", "user")):
                        st.text(str(message.get("content", "")))
                if queue.kind == "pairwise":
                    first, second = st.columns(2)
                    first.markdown("**a**")
                    first.code(item.a or "", language=None, wrap_lines=True)
                    second.markdown("**b**")
                    second.code(item.b or "", language=None, wrap_lines=True)
                    choices = ["a", "b", "tie"]
                else:
                    st.markdown("**answer**")
                    st.code(item.output or "", language=None, wrap_lines=True)
                    choices = queue.choices
                if item.reference:
                    with st.expander("Reference answer"):
                        st.code(item.reference, language=None, wrap_lines=True)
                with st.form(f"label-{item.id}", clear_on_submit=True, enter_to_submit=True):
                    value = st.radio(
                        queue.question, choices, horizontal=True, index=None, key="label-value"
                    )
                    comment = st.text_input("Comment (optional; Enter saves)", key="label-comment")
                    if st.form_submit_button("Save label", type="primary", key="save-label"):
                        if value is None:
                            st.warning("Pick a label first.")
                        else:
                            body = {"value": value, "comment": comment or None}
                            saved = attempt(
                                lambda: api.put(
                                    f"/annotations/queues/{name}/items/{item.id}/label", body
                                ),
                                "saved",
                            )
                            if saved is not None:  # on to the next item, saying what was saved
                                st.session_state["label-saved"] = (
                                    f"labelled item {item.position}: {value}"
                                )
                                st.rerun()

with agreement_part:
    st.subheader("Agreement")
    report = shown(lambda: api.one(AgreementReport, f"/annotations/queues/{name}/agreement"))
    if report is not None:
        if report.judges:
            st.markdown("**Judges against humans**")
            st.table(_rows(report.judges))
        else:
            st.info("No judge agreement yet: it needs labels on items an LLM judge scored.")
        if report.raters:
            st.markdown("**Between raters**")
            st.table(_rows(report.raters))
        st.caption(
            f"{report.method}. Read kappa beside raw agreement: it is 0 when one side always "
            "gives the same label, however often the other agrees with it."
        )
    st.caption(
        f"Export: `evalhub annotate export {name} -o labels.jsonl`; as a dataset version: "
        f"`evalhub annotate register {name} DATASET`."
    )
