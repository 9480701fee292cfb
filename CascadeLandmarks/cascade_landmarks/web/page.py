"""The web app's page: a drawer with the workflow (case, model and Detect, the landmark table, save and fine-tune,
downloads) beside Slicer's slice and 3-D views, and a footer with the job's progress.

Elements a test or a user's script looks for carry ids: ``case-path``, ``open-case``, ``upload``, ``detect``,
``cancel``, ``landmarks`` (the table; one ``tr.landmark`` per landmark, ``data-label`` naming it, with a
``button.place`` while it has no point and a ``button.not_in_view`` while it has one), ``case-name``,
``save-case``, ``replace-case``, ``fine-tune``, ``download-mrk``, ``download-csv``, ``message``, ``status``,
``mm-per-pixel``, ``view-Red`` (and Yellow, Green: hidden markers beside each slice view) and ``busy`` (the
notice a second tab gets).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3
from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui

if TYPE_CHECKING:
    from .app import WebApp

STYLE = """
tr.landmark { cursor: pointer; }
tr.landmark.flagged { background: #ffe0b2; }
tr.landmark.outside { background: #eeeeee; color: #757575; }
#landmarks td, #landmarks th { padding: 2px 6px; font-size: 13px; text-align: left; }
"""


def build_page(app: WebApp) -> None:
    """Lay out the page of ``app``, its buttons bound to ``app``'s actions."""
    ctrl, action = app.ctrl, app.action
    ctrl.trigger("claim")(app.claim)  # a trigger's answer goes to the asking tab only
    ctrl.trigger("points_mrk")(lambda: app.points_file("mrk"))
    ctrl.trigger("points_csv")(lambda: app.points_file("csv"))
    for name in ("place", "not_in_view"):  # named: their buttons' clicks must not also click the row
        ctrl.trigger(name)(action(getattr(app, name)))
    for name in ("open_case", "upload", "detect", "cancel", "centre", "save_case", "fine_tune"):
        ctrl.add(name)(action(getattr(app, name)))
    with SinglePageWithDrawerLayout(app.server, full_height=True) as page:
        client.Style(STYLE)
        client.ClientTriggers(mounted="trigger('claim').then(mine => { role = mine ? 'owner' : 'busy' })")
        page.title.set_text("Cascade Landmarks")
        with page.toolbar:
            v3.VSpacer()
            _select("Window", "window", "windows", style="max-width: 160px")
        with page.drawer as drawer:
            drawer.width = 440
            with html.Div(v_if="role === 'owner'", classes="pa-3"):
                _case_panel(ctrl)
                _detect_panel(ctrl)
                _table(ctrl)
                _save_panel(ctrl)
        with page.content:
            html.Div(
                "This server is busy: another browser tab is working in it. Close that tab, then reload this one "
                "(or start another server for a second person).",
                v_if="role === 'busy'",
                id="busy",
                classes="pa-6 text-h6",
            )
            with html.Div(v_if="role === 'owner'", style="height: 100%; display: flex;"):
                app.layout.initialize_layout_grid(page)
        page.footer.clear()
        with page.footer:
            v3.VProgressLinear(
                v_model=("progress",), v_show=("job",), style="max-width: 200px", classes="mr-3", id="progress"
            )
            html.Span("{{ status }}", id="status")
            v3.VSpacer()
            html.Span("red view: {{ mm_per_pixel }} mm per pixel", v_show=("mm_per_pixel",), id="mm-per-pixel")


def _select(label: str, value: str, choices: str, **layout) -> None:
    """A drop-down list bound to the state variables ``value`` and ``choices``; its id is ``value``."""
    v3.VSelect(
        label=label, v_model=(value,), items=(choices,), density="compact", hide_details=True, id=value, **layout
    )


def _case_panel(ctrl) -> None:
    html.Div("Case", classes="text-subtitle-1")
    v3.VCombobox(
        label="Case in the data folder",
        v_model=("case_path",),
        items=("cases",),
        density="compact",
        id="case-path",
        hide_details=True,
    )
    with html.Div(classes="d-flex align-center my-2"):
        v3.VBtn("Open", click=(ctrl.open_case, "[case_path]"), disabled=("!!job",), id="open-case", classes="mr-2")
        v3.VFileInput(
            label="or upload a volume",
            density="compact",
            hide_details=True,
            id="upload",
            change=(ctrl.upload, "[$event.target.files]"),
        )


def _detect_panel(ctrl) -> None:
    with html.Div(classes="d-flex align-center my-2"):
        _select("Model", "model", "models", classes="mr-2")
        v3.VBtn(
            "Detect", click=ctrl.detect, disabled=("!!job || !opened",), color="primary", id="detect", classes="mr-2"
        )
        v3.VBtn("Cancel", click=ctrl.cancel, v_show=("job",), id="cancel")
    v3.VAlert(
        text=("message",), type=("message_kind",), v_show=("message",), density="compact", id="message", classes="my-2"
    )


def _table(ctrl) -> None:
    with html.Table(id="landmarks", v_show=("rows.length",), style="width: 100%; border-collapse: collapse"):
        with html.Tr():
            for title in ("landmark", "confidence", "moved (mm)", "R, A, S (mm)", ""):
                html.Th(title)
        with html.Tr(
            v_for="row in rows",
            key="row.label",
            __properties=[("data_label", "data-label")],
            data_label=("row.label",),
            click=(ctrl.centre, "[row.label]"),
            classes=("['landmark', {flagged: row.flagged && row.in_view, outside: !row.ras}]",),
        ):
            html.Td("{{ row.label }}", title=("row.description",))
            html.Td("{{ row.confidence }}")
            html.Td("{{ row.moved }}", classes="moved")
            html.Td("{{ row.ras }}", classes="ras")
            with html.Td():
                html.Span("{{ row.check }}")
                for name, title, shown in (("place", "Place", "!row.ras"), ("not_in_view", "Not in view", "row.ras")):
                    v3.VBtn(title, v_if=shown, size="x-small", variant="outlined", classes=f"ml-1 {name}",
                            click=f"$event.stopPropagation(); trigger('{name}', [row.label])")  # fmt: skip


def _save_panel(ctrl) -> None:
    html.Div("Save and fine-tune", classes="text-subtitle-1 mt-4")
    v3.VTextField(label="Case name", v_model=("case_name",), density="compact", hide_details=True, id="case-name")
    with html.Div(classes="d-flex flex-wrap my-2", style="gap: 6px"):
        v3.VBtn("Save case", click=(ctrl.save_case, "[false]"), disabled=("!!job || !rows.length",), id="save-case")
        v3.VBtn(
            "Replace", click=(ctrl.save_case, "[true]"), v_show=("offer_overwrite",), color="warning", id="replace-case"
        )
        v3.VBtn("Fine-tune", click=ctrl.fine_tune, disabled=("!!job",), id="fine-tune")
        for kind, title, file, mime in (
            ("mrk", ".mrk.json", "points.mrk.json", "application/json"),
            ("csv", "CSV", "points.csv", "text/csv"),
        ):
            v3.VBtn(
                title,
                click=f"utils.download('{file}', trigger('points_{kind}'), '{mime}')",
                disabled=("!rows.length",),
                id=f"download-{kind}",
                prepend_icon="mdi-download",
            )


def slice_view_gutter(server, view_id: str, view) -> None:
    """trame-slicer's slice-view controls (reset, slider), and a hidden ``view-<Red|Yellow|Green>`` marker that
    names the view beside it, for scripts and tests."""
    create_vertical_slice_view_gutter_ui(server, view_id, view)
    html.Div(id=f"view-{view_id}", style="display: none")
