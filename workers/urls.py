from django.urls import path

from workers import views

app_name = "jobs"

urlpatterns = [
    path("", views.job_list, name="list"),
    path("tokenizer/", views.tokenizer_lab, name="tokenizer_lab"),
    path("<uuid:code>/", views.job_detail, name="detail"),
    path("<uuid:code>/cancel/", views.cancel, name="cancel"),
    path("<uuid:code>/delete/", views.delete, name="delete"),
    path("<uuid:code>/merges/", views.merge_steps, name="merges"),
    path("<uuid:code>/compare/", views.compare, name="compare"),
    path("<uuid:code>/files/<str:name>", views.download, name="download"),
]
