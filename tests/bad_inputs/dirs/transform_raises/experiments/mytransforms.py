def to_prompt(row):
    return {'inputs': {'question': row['q']}, 'expected': row['a']}
