def to_prompts(row):
    return {'inputs': {'question': row['q']}, 'expected': row['a']}
