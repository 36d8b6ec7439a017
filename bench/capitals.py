"""The B1 task: 64 capital questions, each with the gold answer as privileged context.

Shared by the evsys and the TRL workers of bench/bench_sdft.py (no imports beyond the stdlib).
"""

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Brazil", "Brasilia"), ("Turkey", "Ankara"), ("Switzerland", "Bern"),
    ("Canada", "Ottawa"), ("Morocco", "Rabat"), ("Vietnam", "Hanoi"), ("Pakistan", "Islamabad"),
    ("New Zealand", "Wellington"), ("Australia", "Canberra"), ("Japan", "Tokyo"), ("China", "Beijing"),
    ("India", "New Delhi"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Nigeria", "Abuja"),
    ("South Africa", "Pretoria"), ("Argentina", "Buenos Aires"), ("Chile", "Santiago"), ("Peru", "Lima"),
    ("Colombia", "Bogota"), ("Mexico", "Mexico City"), ("Cuba", "Havana"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Iceland", "Reykjavik"),
    ("Ireland", "Dublin"), ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Hungary", "Budapest"),
    ("Greece", "Athens"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Ukraine", "Kyiv"),
    ("Russia", "Moscow"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Saudi Arabia", "Riyadh"),
    ("Israel", "Jerusalem"), ("Thailand", "Bangkok"), ("Indonesia", "Jakarta"), ("Philippines", "Manila"),
    ("South Korea", "Seoul"), ("Malaysia", "Kuala Lumpur"), ("Bangladesh", "Dhaka"), ("Nepal", "Kathmandu"),
    ("Afghanistan", "Kabul"), ("Ethiopia", "Addis Ababa"), ("Ghana", "Accra"), ("Senegal", "Dakar"),
    ("Algeria", "Algiers"), ("Tunisia", "Tunis"), ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"),
    ("Czechia", "Prague"), ("Slovakia", "Bratislava"), ("Croatia", "Zagreb"), ("Serbia", "Belgrade"),
]
assert len(CAPITALS) == 64

QUESTION = "What is the capital of {country}?"
DEMO_TEMPLATE = "{prompt}\n\nHint: the answer is {expected}."  # evsys's default SDFT demo_template


def rows() -> list[dict]:
    """evsys prompt-format rows: inputs.question and the gold answer."""
    return [{"inputs": {"question": QUESTION.format(country=c)}, "expected": a} for c, a in CAPITALS]
