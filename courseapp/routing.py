from django.urls import path

from lessons.consumers import ExerciseConsumer, ModelApiConsumer
from workers.consumers import HealthConsumer

websocket_urlpatterns = [
    path("ws/health/", HealthConsumer.as_asgi()),
    path("ws/model/", ModelApiConsumer.as_asgi()),
    path("ws/exercise/", ExerciseConsumer.as_asgi()),
]
