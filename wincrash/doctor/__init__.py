"""`wincrash doctor`: is this host and this VM set up so that Windows (and Hyper-V inside it) can crash usefully?"""
