from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from lessons import api
from lessons import views as lesson_views

urlpatterns = [
    path("", include("lessons.urls")),
    path("accounts/", lesson_views.account, name="account"),
    path("accounts/signup/", lesson_views.signup, name="signup"),
    path("accounts/tokens/", lesson_views.create_api_token, name="create_api_token"),
    path("accounts/tokens/<uuid:code>/revoke/", lesson_views.revoke_api_token, name="revoke_api_token"),
    path("v1/completions", api.completions, name="api_completions"),
    path("api/tokenize", api.tokenize, name="api_tokenize"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("accounts/password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("jobs/", include("workers.urls")),
    path("admin/", admin.site.urls),
]
