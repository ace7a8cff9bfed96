"""The evalhub dashboard: `evalhub dashboard` runs `streamlit run` on this file.

Every page talks to the REST API only (dashboard.client), with the token of this browser
session (dashboard.session).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent

PAGES = [
    ("pages/overview.py", "Overview", ":material/dashboard:"),
    ("pages/registry.py", "Registry", ":material/inventory_2:"),
    ("pages/evaluations.py", "Evaluations", ":material/rule:"),
    ("pages/human_eval.py", "Human evaluation", ":material/how_to_reg:"),
    ("pages/finetuning.py", "Fine-tuning", ":material/model_training:"),
    ("pages/deployments.py", "Deployments and A/B", ":material/call_split:"),
    ("pages/monitoring.py", "Monitoring", ":material/monitor_heart:"),
]

st.set_page_config(page_title="evalhub", page_icon=":material/loop:", layout="wide")
navigation = st.navigation(
    [st.Page(HERE / path, title=title, icon=icon) for path, title, icon in PAGES]
)
navigation.run()
