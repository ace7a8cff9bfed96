"""Production monitoring: feedback, online scores, the rollout controller. `monitors/` decides;
this package reads the traffic log, stores what the monitors return and acts through the
deployment service."""
