"""`wincrash convert`: memory source -> find Windows -> plan -> write a DMP (pipeline.py), and its rendering."""
