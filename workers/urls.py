from django.urls import path

from workers import views

app_name = "jobs"

urlpatterns = [
    path("", views.job_list, name="list"),
    path("tokenizer/", views.tokenizer_lab, name="tokenizer_lab"),
    path("lora/", views.lora_lab, name="lora_lab"),
    path("lora/preview/", views.lora_preview, name="lora_preview"),
    path("quantization/", views.quantization_lab, name="quantization_lab"),
    path("<uuid:code>/", views.job_detail, name="detail"),
    path("<uuid:code>/cancel/", views.cancel, name="cancel"),
    path("<uuid:code>/delete/", views.delete, name="delete"),
    path("<uuid:code>/merges/", views.merge_steps, name="merges"),
    path("<uuid:code>/compare/", views.compare, name="compare"),
    path("<uuid:code>/files/<str:name>", views.download, name="download"),
]
