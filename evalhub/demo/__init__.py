"""`evalhub demo`: the whole loop offline on CPU, on a tiny model or on SmolLM2-135M-Instruct,
with the commands users type (`run_demo`)."""

from evalhub.demo.dashboard import stop_dashboard
from evalhub.demo.profiles import QUICK, demo_files, evalhub_home
from evalhub.demo.run import run_demo
from evalhub.demo.shell import DemoFailed

__all__ = ["QUICK", "DemoFailed", "demo_files", "evalhub_home", "run_demo", "stop_dashboard"]
