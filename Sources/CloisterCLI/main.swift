print("cloister")
