def grade_answer(answer, expected):
    return float(expected in answer)
