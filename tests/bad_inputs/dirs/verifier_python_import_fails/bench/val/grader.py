import no_such_dependency_xyz

def grade(answer, expected):
    return 1.0
