"""`wincrash info`: the command's side (render.py); what a file holds is found by wincrash.describe."""
