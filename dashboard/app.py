"""The evalhub dashboard: `evalhub dashboard` runs `streamlit run` on this file.

Every page talks to the REST API only (dashboard.client), with the token of this browser
session (dashboard.session).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent
# The pages live in views/, not pages/: Streamlit would also serve a pages/ directory on its own,
# with a navigation of file names, to a browser whose first request is a page's URL.

PAGES = [
    ("views/overview.py", "Overview", ":material/dashboard:"),
    ("views/registry.py", "Registry", ":material/inventory_2:"),
    ("views/evaluations.py", "Evaluations", ":material/rule:"),
    ("views/human_eval.py", "Human evaluation", ":material/how_to_reg:"),
    ("views/finetuning.py", "Fine-tuning", ":material/model_training:"),
    ("views/experiments.py", "Experiments", ":material/leaderboard:"),
    ("views/deployments.py", "Deployments and A/B", ":material/call_split:"),
    ("views/monitoring.py", "Monitoring", ":material/monitor_heart:"),
]

st.set_page_config(page_title="evalhub", page_icon=":material/loop:", layout="wide")
navigation = st.navigation(
    [st.Page(HERE / path, title=title, icon=icon) for path, title, icon in PAGES]
)
navigation.run()
