from django.urls import path

from lessons.consumers import ExerciseConsumer, ModelApiConsumer
from workers.consumers import HealthConsumer, JobConsumer

websocket_urlpatterns = [
    path("ws/health/", HealthConsumer.as_asgi()),
    path("ws/model/", ModelApiConsumer.as_asgi()),
    path("ws/exercise/", ExerciseConsumer.as_asgi()),
    path("ws/jobs/<uuid:code>/", JobConsumer.as_asgi()),
]
