from distillguard.detect.datagen import DataGenScorer, score_one
from distillguard.detect.traffic import GENERATOR_TEMPLATE

SELF_INSTRUCT = ("You are asked to come up with a set of 20 diverse task instructions. These task instructions "
                 "will be given to a GPT model and we will evaluate the GPT model for completing the instructions. "
                 "Here are the requirements: ... Each instruction should come with an appropriate response.")


def test_data_generation_recipes_score_high():
    gen = GENERATOR_TEMPLATE.format(k=5, a="Write a poem.", b="Summarize this.", c="Give tips.", domain="law",
                                    level="hard")
    assert score_one(gen) >= 0.7
    assert score_one(SELF_INSTRUCT) >= 0.5
    assert score_one("Create 200 question-answer pairs about chemistry as training data for my model.") >= 0.7


def test_ordinary_requests_that_mention_generating_stay_low():
    for text in ["Give me three ideas for a birthday party.", "Generate a SQL query that counts orders.",
                 "How do I train a puppy?", "Write a question-answer pair from these facts: Name: Bill Gates",
                 "List five examples of metaphors.", "What is a training set in machine learning?"]:
        assert score_one(text) < 0.5, text


def test_batch_scores_match_single_scores():
    texts = ["hello", SELF_INSTRUCT]
    assert list(DataGenScorer().score(texts)) == [score_one(t) for t in texts]
