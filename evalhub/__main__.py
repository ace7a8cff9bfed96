from evalhub.cli import app

app(prog_name="evalhub")
