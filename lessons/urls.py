from django.urls import path

from lessons import tokenize_view, views

urlpatterns = [
    path("", views.course, name="course"),
    path("learn/<slug:slug>/", views.lesson_page, name="lesson"),
    path("learn/<slug:slug>/done/", views.mark_done, name="mark_done"),
    path("learn/<slug:slug>/quiz/<slug:question_key>/", views.answer_question, name="answer_question"),
    path("tokenizer/", tokenize_view.tokenize, name="tokenize"),
]
